"""A data set from rosbag2 recordings: ``m2vae-fusion dataset --from-bag BAG [BAG …] --out DIR`` (docs/retrain.md).

Bags are read with the ``rosbags`` library (sqlite3 and mcap storage; a bag directory, or a single ``.mcap`` /
``.db3`` file). Per agent the user names up to three sensor topics (camera ``sensor_msgs/Image``, LiDAR
``LaserScan`` or ``PointCloud2``, reflectance ``LaserScan``) and optionally the agent's
``m2vae_fusion_msgs/TargetOfInterest`` topic. Extraction:

Each bag is read with the fusion node's own per-agent code:

1. first the TargetOfInterest messages: each agent's target timeline
   (:class:`m2vae_fusion.core.agent.TargetTimeline`, the node's) holds every announcement of the bag (a live node
   knows only those received so far; the bag knows them all, so a late-delivered announcement still counts);
2. then the sensor messages in bag (receive) order, as the node receives them, each through the node's admission
   (:func:`m2vae_fusion.core.agent.admit_observation`): its header stamp must not be older than
   ``--max-message-age`` or newer than ``--future-tolerance`` relative to its receive time (the node's clock on
   replay), dropped as ``stale`` / ``future``; it gets the target in force at its stamp (the newest announcement
   stamped at or before it); observations between targets are counted as ``no_target`` and left out;
3. it is converted with the node's readers (:mod:`m2vae_fusion.core.messages`) and checked by the node's
   preprocessing call (:func:`m2vae_fusion.core.preprocess.preprocess`, with the crop position of
   :func:`m2vae_fusion.core.agent.crop_position` when the crop is on); a message
   the node would drop is dropped here too and counted by its :class:`~m2vae_fusion.core.reasons.DropReason`
   (``bad_encoding``, ``colourless`` for mono and depth images, ``truncated``, ``non_finite``, ``preprocess`` for
   scans with too many NaN beams, …);
4. per agent and target run, observations of different modalities are grouped into samples: closest pairs first, a
   sample never holds two observations of one modality, and its stamps span at most ``max_dt`` s. An observation
   without a partner within the tolerance becomes a partial sample (``present`` marks what is missing);
5. labels (optional) come from a labels file (target id → class name, optionally time ranges → class name) or,
   without one, from ``/sim/ground_truth`` when the bag holds it; without labels ``class_names`` is null and every
   ``label`` is −1 (training then builds no class-belief head);
6. samples are shuffled (seeded) and split (80/10/10 by default), then written with :mod:`m2vae_fusion.data.shards`
   (``source: "rosbag"``).

The stored arrays are the node's raw inputs: the camera image resized to the training size (``resize_camera``), the
LiDAR ranges on the data set's beam grid (NaN beams, which preprocessing treats as no return, stored as ``+inf``),
the reflectance (range, intensity) pairs; so training preprocesses exactly what the node preprocesses. With
``--crop-like DIR`` the target-centred preprocessing of that bundle or data set is switched on
(:func:`target_centred_configs`): each sample also stores ``target_position`` (the node's crop position: the
TargetOfInterest position when it is in ``--base-frame``, else NaN, the crops' fallback), and training crops through
the same :mod:`m2vae_fusion.core.preprocess` functions as the node. ``metadata.json["rosbag"]["preprocessing"]``
records the stamp checks, the base frame and what the crop used.

Only the standard library is imported at module level (``add_arguments`` serves ``--help``); numpy, rosbags and the
ROS message code are imported where used.
"""
from __future__ import annotations

import glob
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from m2vae_fusion.bags import CAMERA_INFO, CLOUD, GROUND_TRUTH_TOPIC, IMAGE, SCAN, STRING, TARGET, typestore
from m2vae_fusion.core.modalities import MODALITIES, subset_key

#: message types accepted per role
ROLE_TYPES = {"camera": (IMAGE,), "lidar": (SCAN, CLOUD), "reflectance": (SCAN,), "target": (TARGET,)}
NONE_TOPIC = ("", "-", "none")

#: what each drop reason means, for the summary
REASONS = {
    "bad_encoding": "unsupported image encoding",
    "colourless": "mono / depth image: no colour for the colour camera model",
    "empty": "no pixels / beams / points",
    "truncated": "data shorter than the declared layout",
    "non_finite": "NaN / inf where finite values are needed (e.g. a scan of only NaN)",
    "mismatch": "does not fit the data set's sensor (beam count, field of view)",
    "no_xyz": "point cloud without x, y, z",
    "no_return": "nothing within range",
    "preprocess": "rejected by preprocessing (e.g. more than half of the beams NaN)",
    "bad_angles": "scan angles outside the sane range",
    "beam_count": "scan beam count disagrees with its angles",
    "bad_range_limits": "scan range_min < 0 or range_max <= range_min",
    "too_many_invalid": "more than half of the beams outside the scan's own range limits",
    "stale": "stamped longer than --max-message-age before it was received (the node's check)",
    "future": "stamped more than --future-tolerance after it was received (the node's check)",
    "deserialize": "cannot be deserialised (corrupt message)",
    "internal_error": "malformed in another way (the node counts it as internal_error)",
}


# ------------------------------------------------------------------------------------------------ arguments
def add_arguments(parser) -> None:
    """The ``--from-bag`` options of ``m2vae-fusion dataset`` (standard library only)."""
    g = parser.add_argument_group("from rosbag2 recordings (--from-bag BAG … --out DIR; see docs/retrain.md)")
    g.add_argument("--from-bag", nargs="+", metavar="BAG",
                   help="extract the data set for --out from these rosbag2 bags (directories, or .mcap/.db3 files)")
    g.add_argument("--camera-topic", action="append", metavar="T",
                   help="sensor_msgs/Image topic; once per agent, matched by position ('-': agent has none)")
    g.add_argument("--lidar-topic", action="append", metavar="T",
                   help="sensor_msgs/LaserScan or PointCloud2 topic; once per agent ('-': none)")
    g.add_argument("--reflectance-topic", action="append", metavar="T",
                   help="few-beam reflectance sensor_msgs/LaserScan topic; once per agent ('-': none)")
    g.add_argument("--target-topic", action="append", metavar="T",
                   help="m2vae_fusion_msgs/TargetOfInterest topic: once per agent, or once for all; without it "
                        "samples are grouped by time only")
    g.add_argument("--labels", metavar="YAML", help="labels file: target id -> class name, optional time ranges "
                                                    "(default: from /sim/ground_truth when the bag holds it)")
    g.add_argument("--no-labels", action="store_true",
                   help="write an unlabelled data set even when the bag holds /sim/ground_truth")
    g.add_argument("--write-labels", metavar="YAML", help="also write the labels used (e.g. those derived from "
                                                          "/sim/ground_truth) as a labels file to edit and reuse")
    g.add_argument("--max-dt", type=float, default=0.1,
                   help="seconds: observations of different modalities closer than this form one sample (0.1)")
    g.add_argument("--cloud-z", nargs=2, type=float, default=(-0.1, 0.1), metavar=("MIN", "MAX"),
                   help="PointCloud2 LiDAR: height band (m, sensor frame) of the planar scan (-0.1 0.1)")
    g.add_argument("--intensity-max", type=float, default=1.0,
                   help="reflectance intensity that preprocessing maps to 1 (1.0)")
    g.add_argument("--max-message-age", type=float, default=2.0,
                   help="s: drop sensor messages stamped longer than this before their receive time in the bag, as "
                        "the fusion node's parameter of this name does (2.0; <= 0: off)")
    g.add_argument("--future-tolerance", type=float, default=0.5,
                   help="s: drop sensor messages stamped more than this after their receive time, as the node does "
                        "(0.5; 'inf': off)")
    g.add_argument("--base-frame", default="base_link",
                   help="frame of TargetOfInterest positions usable for the target-centred crop, as the node's "
                        "base_frame (base_link); positions in other frames: the crops' fallback")
    g.add_argument("--crop-like", metavar="DIR",
                   help="switch on the target-centred preprocessing (camera crop, LiDAR window) of this bundle or "
                        "data set: store each sample's target_position and the crop configs (default: off)")
    g.add_argument("--camera-to-base", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="with --crop-like: the camera's optical centre in the base frame (m; default: --crop-like's)")


# ------------------------------------------------------------------------------------------------ data model
@dataclass
class AgentTopics:
    """The topics of one agent; ``None``: the agent has no such sensor (or no target topic)."""

    camera: Optional[str] = None
    lidar: Optional[str] = None
    reflectance: Optional[str] = None
    target: Optional[str] = None
    #: sensor_msgs/CameraInfo topic of the camera; None: ``camera_info`` beside the image topic (image_transport's
    #: convention, e.g. ``/r/camera/camera_info`` for ``/r/camera/image_raw``), used when a bag holds it
    camera_info: Optional[str] = None

    def sensors(self) -> Dict[str, str]:
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m)}

    def camera_info_topic(self) -> Optional[str]:
        """The CameraInfo topic to look for (None without a camera)."""
        if not self.camera:
            return None
        return self.camera_info or self.camera.rsplit("/", 1)[0] + "/camera_info"


@dataclass
class Labels:
    """Class names plus target id → class index and time ranges ``(start_ns, end_ns, class index)``."""

    class_names: List[str]
    targets: Dict[str, int] = field(default_factory=dict)
    ranges: List[tuple] = field(default_factory=list)  # (start s, end s, class index)
    absolute: bool = False
    source: str = ""

    def label(self, target: Optional[str], stamp_ns: int, bag_start_ns: int) -> int:
        t = stamp_ns * 1e-9 if self.absolute else (stamp_ns - bag_start_ns) * 1e-9
        for start, end, k in self.ranges:
            if start <= t < end:
                return k
        if target is not None and target in self.targets:
            return self.targets[target]
        return -1

    def as_yaml_dict(self) -> dict:
        d = {"class_names": list(self.class_names),
             "targets": {t: self.class_names[k] for t, k in sorted(self.targets.items())}}
        if self.ranges:
            d["times"] = [{"start": s, "end": e, "class": self.class_names[k]} for s, e, k in self.ranges]
            d["absolute_times"] = self.absolute
        return d


@dataclass
class SampleInfo:
    """Where a sample came from: bag, agent index, target id (None without a target topic), and per modality the
    topic and header stamp (ns) of its observation."""

    bag: str
    agent: int
    target: Optional[str]
    stamps: Dict[str, int]
    topics: Dict[str, str]
    label: int = -1


@dataclass
class Extraction:
    """What an extraction read, dropped and wrote (see :func:`format_summary`)."""

    metadata: dict
    bags: List[dict]
    read: Counter  # topic -> messages read
    dropped: Counter  # (topic, reason) -> messages
    drop_examples: Dict[tuple, str]
    no_target: Counter  # topic -> observations outside any target
    subsets: Counter  # "camera+lidar" -> samples
    partial: int
    labelled: int
    labels_source: str
    unknown_label_targets: List[str]
    index: Dict[str, List[SampleInfo]]  # split -> sample infos in written order
    stamps_from_bag_time: int = 0
    preprocessing: dict = field(default_factory=dict)  # metadata.json["rosbag"]["preprocessing"]


# ------------------------------------------------------------------------------------------------ helpers
def _user_error(msg: str):
    from m2vae_fusion.errors import UserError

    return UserError(msg)


def _norm_topic(t: Optional[str]) -> Optional[str]:
    if t is None or t.strip().lower() in NONE_TOPIC:
        return None
    t = t.strip()
    return t if t.startswith("/") else "/" + t


def agents_from_options(camera=None, lidar=None, reflectance=None, target=None) -> List[AgentTopics]:
    """Per-agent topics from the repeated ``--camera-topic`` … options (matched by position).

    Raises:
        UserError: no sensor topic at all, option counts that differ, an agent without any sensor, a sensor topic
            named twice.
    """
    lists = {"camera": list(camera or []), "lidar": list(lidar or []), "reflectance": list(reflectance or [])}
    n = max(len(v) for v in lists.values())
    if n == 0:
        raise _user_error("--from-bag needs at least one of --camera-topic, --lidar-topic, --reflectance-topic")
    for m, v in lists.items():
        if v and len(v) != n:
            raise _user_error(f"--{m}-topic is given {len(v)} time(s) for {n} agents: give it once per agent, matched "
                              "by position ('-' for an agent without that sensor)")
    targets = list(target or [])
    if targets and len(targets) not in (1, n):
        raise _user_error(f"--target-topic is given {len(targets)} times for {n} agents: give it once per agent or "
                          "once for all")
    agents = []
    seen = {}
    for k in range(n):
        a = AgentTopics(**{m: _norm_topic(v[k]) if v else None for m, v in lists.items()},
                        target=_norm_topic(targets[k if len(targets) > 1 else 0]) if targets else None)
        if not a.sensors():
            raise _user_error(f"agent {k} (position {k + 1} of the topic options) has no sensor topic")
        for m, t in a.sensors().items():
            if t in seen:
                raise _user_error(f"topic {t} is named twice ({seen[t]} and agent {k} {m})")
            seen[t] = f"agent {k} {m}"
        agents.append(a)
    return agents


def open_bag(path: str):
    """An open ``rosbags.rosbag2.Reader``. Raises UserError naming the bag when it is missing or unreadable."""
    from rosbags.rosbag2 import Reader

    if not os.path.exists(path):
        raise _user_error(f"bag {path} does not exist")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "metadata.yaml")):
        files = sorted(glob.glob(os.path.join(path, "*.mcap")) + glob.glob(os.path.join(path, "*.db3")))
        hint = f" (an interrupted recording? try the storage file {files[0]})" if files else ""
        raise _user_error(f"bag {path} has no metadata.yaml: not a rosbag2 bag{hint}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises ReaderError, but also KeyError/struct errors on corrupt files
        raise _user_error(f"bag {path} cannot be read: {_one_line(exc)}") from None
    return reader


def _one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def load_labels(path: str) -> Labels:
    """Parse a labels file (docs/retrain.md):

    .. code-block:: yaml

        class_names: [...]          # optional; default: the 8 classes of docs/formats.md
        targets:                    # target id -> class name
          object_0: red_cylinder_matte
        times:                      # optional: [start, end) seconds -> class name, checked before targets
          - {start: 0.0, end: 12.5, class: green_cube_shiny}
        absolute_times: false       # times in seconds since the bag's start (default) or since the epoch

    A flat mapping ``target id: class name`` is accepted too.

    Raises:
        UserError: missing / unreadable file, bad structure, or a label naming an unknown class.
    """
    import yaml

    from m2vae_fusion.data.classes import CLASS_NAMES

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise _user_error(f"labels file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise _user_error(f"labels file {path} cannot be read: {_one_line(exc)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _user_error(f"labels file {path}: expected a mapping (targets: {{id: class}}), got {type(doc).__name__}")
    structured = {"class_names", "targets", "times", "absolute_times"}
    if not (set(doc) <= structured):
        doc = {"targets": doc}
    names = doc.get("class_names") or list(CLASS_NAMES)
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise _user_error(f"labels file {path}: class_names must be a list of distinct names")

    def index(name, where):
        if not isinstance(name, str) or name not in names:
            raise _user_error(f"labels file {path}: {where} names unknown class {name!r} (known: {', '.join(names)})")
        return names.index(name)

    targets = doc.get("targets") or {}
    if not isinstance(targets, dict):
        raise _user_error(f"labels file {path}: targets must map target ids to class names")
    out = Labels(list(names), source=f"labels file {path}", absolute=bool(doc.get("absolute_times", False)))
    for tid, name in targets.items():
        out.targets[str(tid)] = index(name, f"target {tid!r}")
    times = doc.get("times") or []
    if not isinstance(times, list):
        raise _user_error(f"labels file {path}: times must be a list of {{start, end, class}}")
    for i, entry in enumerate(times):
        if not isinstance(entry, dict) or not {"start", "end", "class"} <= set(entry):
            raise _user_error(f"labels file {path}: times[{i}] needs start, end and class")
        try:
            start, end = float(entry["start"]), float(entry["end"])
        except (TypeError, ValueError):
            raise _user_error(f"labels file {path}: times[{i}] start/end must be numbers") from None
        if not end > start:
            raise _user_error(f"labels file {path}: times[{i}] end {end} is not after start {start}")
        out.ranges.append((start, end, index(entry["class"], f"times[{i}]")))
    return out


def write_labels_file(path: str, labels: Labels) -> None:
    """Write ``labels`` as a labels file that :func:`load_labels` reads back."""
    import yaml

    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# labels for m2vae-fusion dataset --from-bag --labels ({labels.source})\n")
            yaml.safe_dump(labels.as_yaml_dict(), f, sort_keys=False)
    except OSError as exc:
        raise _user_error(f"cannot write labels file {path}: {exc.strerror or exc}") from None


def ground_truth_labels(bag: str, reader=None) -> Optional[Labels]:
    """Labels (object id → class) from the bag's ``/sim/ground_truth`` (std_msgs/String JSON of the simulated world);
    None when the bag has no such topic or no valid message on it."""
    from m2vae_fusion.data.classes import CLASS_NAMES

    own = reader is None
    reader = open_bag(bag) if own else reader
    try:
        conns = [c for c in reader.connections if c.topic == GROUND_TRUTH_TOPIC and c.msgtype == STRING]
        if not conns:
            return None
        store = typestore()
        names, targets = None, {}
        for conn, _, raw in reader.messages(connections=conns):
            try:
                doc = json.loads(store.deserialize_cdr(raw, STRING).data)
                objects = doc["objects"]
                names = list(doc.get("class_names") or names or CLASS_NAMES)
                for oid, o in objects.items():
                    targets[str(oid)] = str(o["class_name"])
            except Exception:  # a malformed ground-truth message: ignore it
                continue
        if not targets:
            return None
        bad = {t: n for t, n in targets.items() if n not in names}
        if bad:
            raise _user_error(f"bag {bag}: {GROUND_TRUTH_TOPIC} names classes {sorted(set(bad.values()))} outside its "
                              f"class_names")
        return Labels(names, {t: names.index(n) for t, n in targets.items()}, source=f"{GROUND_TRUTH_TOPIC} of {bag}")
    finally:
        if own:
            reader.close()


def _check_topics(bag: str, reader, agents: Sequence[AgentTopics]) -> Dict[str, str]:
    """topic -> message type for every topic the agents name. Raises UserError naming the bag and topic."""
    have = {}
    for c in reader.connections:
        have.setdefault(c.topic, c.msgtype)
    out = {}
    for k, a in enumerate(agents):
        for role in (*MODALITIES, "target"):
            t = getattr(a, role)
            if not t:
                continue
            if t not in have:
                relevant = sorted(x for x, ty in have.items() if ty in ROLE_TYPES[role])
                raise _user_error(f"bag {bag} has no topic {t} (--{role}-topic of agent {k}); its "
                                  f"{'/'.join(ty.rsplit('/', 1)[-1] for ty in ROLE_TYPES[role])} topics: "
                                  f"{', '.join(relevant) or 'none'}")
            if have[t] not in ROLE_TYPES[role]:
                raise _user_error(f"bag {bag}: topic {t} (--{role}-topic of agent {k}) has type {have[t]}, expected "
                                  f"{' or '.join(ROLE_TYPES[role])}")
            out[t] = have[t]
    return out


def _first_message(reader, topic: str, store, valid):
    """The first deserialisable message on ``topic`` for which ``valid(msg)`` holds, or None."""
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _, raw in reader.messages(connections=conns):
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
        except Exception:
            continue
        if valid(msg):
            return msg
    return None


def sensor_configs(bags, readers, agents, types, store, intensity_max: float = 1.0) -> dict:
    """The data set's ``metadata.json["sensors"]`` from the first usable message of each modality: camera at the
    training size 64x64 (plus the published size); LiDAR on the beam grid of the first LaserScan LiDAR topic (a
    PointCloud2-only LiDAR uses the default grid of :data:`m2vae_fusion.core.preprocess.DEFAULT_CONFIGS`);
    reflectance with the first reflectance scan's beam count and range_max."""
    from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS

    def finite(*vals):
        return all(math.isfinite(float(v)) for v in vals)

    sensors = {"camera": {"width": 64, "height": 64, "encoding": "rgb8"},
               "lidar": dict(DEFAULT_CONFIGS["lidar"]),
               "reflectance": {**DEFAULT_CONFIGS["reflectance"], "intensity_max": float(intensity_max)}}
    found = set()
    for bag, reader in zip(bags, readers):
        for a in agents:
            if "camera" not in found and a.camera:
                m = _first_message(reader, a.camera, store, lambda x: x.width > 0 and x.height > 0)
                if m is not None:
                    sensors["camera"].update(published_width=int(m.width), published_height=int(m.height),
                                             published_encoding=str(m.encoding), source_topic=a.camera)
                    found.add("camera")
            if "lidar" not in found and a.lidar and types.get(a.lidar) == SCAN:
                m = _first_message(reader, a.lidar, store, lambda x: len(x.ranges) > 1 and x.angle_increment != 0 and
                                   finite(x.angle_min, x.angle_increment, x.range_min, x.range_max))
                if m is not None:
                    n = len(m.ranges)
                    sensors["lidar"] = {"beams": n, "angle_min": float(m.angle_min),
                                        "angle_max": float(m.angle_min) + float(m.angle_increment) * (n - 1),
                                        "angle_increment": float(m.angle_increment),
                                        "range_min": float(m.range_min), "range_max": float(m.range_max),
                                        "out_of_range": "+inf (REP 117)", "source_topic": a.lidar}
                    found.add("lidar")
            if "reflectance" not in found and a.reflectance:
                m = _first_message(reader, a.reflectance, store,
                                   lambda x: len(x.ranges) > 0 and finite(x.range_max) and x.range_max > 0)
                if m is not None:
                    sensors["reflectance"] = {"beams": len(m.ranges), "range_max": float(m.range_max),
                                              "intensity_max": float(intensity_max),
                                              "angle_min": float(m.angle_min),
                                              "angle_increment": float(m.angle_increment),
                                              "columns": ["range_m", "intensity"], "source_topic": a.reflectance}
                    found.add("reflectance")
    return sensors


def convert(modality: str, msg, msgtype: str, sensors: Mapping, cloud_z=(-0.1, 0.1), target_position=None):
    """One deserialised sensor message → the array a data set stores (see the module docstring), with the fusion
    node's conversion (:mod:`m2vae_fusion.core.messages`) and its preprocessing call
    (:func:`m2vae_fusion.core.preprocess.preprocess` with the data set's config and ``target_position`` (base frame,
    m, or None); the camera's on the stored image, as training will run it) as the check.

    Returns:
        camera uint8 (64, 64, 3) (:func:`~m2vae_fusion.core.preprocess.resize_camera`), lidar float32 (beams,)
        ranges (NaN beams as ``+inf``), reflectance float32 (K, 2).

    Raises:
        m2vae_fusion.core.messages.ConversionError: as the node's readers (``reason`` is the drop reason).
        m2vae_fusion.core.preprocess.PreprocessError: what the node's preprocessing refuses.
    """
    import numpy as np

    from m2vae_fusion.core import preprocess as pp
    from m2vae_fusion.core import messages as conv

    cfg = sensors[modality]
    if modality == "camera":
        x = conv.image_to_rgb(msg)
    elif modality == "lidar":
        if msgtype == CLOUD:
            x = conv.xyz_to_scan(conv.pointcloud2_to_xyz(msg), cfg, float(cloud_z[0]), float(cloud_z[1]))
        else:
            x = conv.scan_to_ranges(msg, cfg)
    else:
        x = conv.reflectance_to_array(msg, int(cfg["beams"]))
    if modality == "camera":
        stored = np.array(pp.resize_camera(x, cfg), dtype=np.uint8, copy=True)
        # the node's call on what training will preprocess (refusals are drops): without a crop it resizes exactly as
        # above; a crop refuses nothing more (its config's K is checked when the data set is set up), and on the
        # full-size image its fallback would cost up to tens of ms per frame
        pp.preprocess(modality, stored, cfg, target_position=target_position)
        return stored
    pp.preprocess(modality, x, cfg, target_position=target_position)  # the node's call: refusals are drops
    x = np.array(x, dtype=np.float32, copy=True)
    if modality == "lidar":
        x[np.isnan(x)] = np.inf  # preprocessing treats NaN (erroneous) beams as no return
    return x


def group(events: Sequence[tuple], max_dt_ns: int) -> List[Dict[str, int]]:
    """Group observations ``(stamp_ns, modality, key)`` into samples: candidate pairs of different modalities within
    ``max_dt_ns`` are joined closest first, as long as the joined group holds each modality at most once and its
    stamps span at most ``max_dt_ns``. Returns one ``{modality: key}`` per group (singletons included), ordered by
    their earliest stamp. Deterministic."""
    ev = sorted(events, key=lambda e: (e[0], e[1], e[2]))
    n = len(ev)
    edges = []
    for i in range(n):
        j = i + 1
        while j < n and ev[j][0] - ev[i][0] <= max_dt_ns:
            if ev[j][1] != ev[i][1]:
                edges.append((ev[j][0] - ev[i][0], i, j))
            j += 1
    edges.sort()
    parent = list(range(n))
    mods = [{ev[i][1]} for i in range(n)]
    lo = [ev[i][0] for i in range(n)]
    hi = [ev[i][0] for i in range(n)]

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, i, j in edges:
        a, b = find(i), find(j)
        if a == b or mods[a] & mods[b] or max(hi[a], hi[b]) - min(lo[a], lo[b]) > max_dt_ns:
            continue
        parent[b] = a
        mods[a] |= mods[b]
        lo[a], hi[a] = min(lo[a], lo[b]), max(hi[a], hi[b])
    groups = defaultdict(dict)
    for i in range(n):
        groups[find(i)][ev[i][1]] = ev[i][2]
    return [groups[r] for r in sorted(groups, key=lambda r: (lo[r], r))]


# ------------------------------------------------------------------------------------------------ extraction
@dataclass
class _Tally:
    """Counters shared by the reading and grouping steps."""

    read: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    no_target: Counter = field(default_factory=Counter)
    stamps_from_bag_time: int = 0
    unknown_label_targets: set = field(default_factory=set)

    def drop(self, topic: str, reason: str, message: str) -> None:
        self.dropped[(topic, reason)] += 1
        self.examples.setdefault((topic, reason), message)


@dataclass
class _Observation:
    """One converted observation: header stamp (ns), stored array, topic, sample segment ``(run, target id)``
    (``(0, None)`` without a target topic) and the crop position the node would use (base frame, m, or None)."""

    stamp: int
    array: object
    topic: str
    segment: tuple
    position: Optional[tuple] = None


class _AgentPolicy:
    """One agent's target timeline and stamp checks during the extraction: the fusion node's own code
    (:class:`m2vae_fusion.core.agent.TargetTimeline`, :func:`~m2vae_fusion.core.agent.admit_observation`,
    :func:`~m2vae_fusion.core.agent.crop_position`). The timeline holds every announcement of the bag
    (:meth:`set_targets`, before the sensor messages): a live node knows only those received by then, so a target
    announcement delivered late would put the first observations of a new target under the old one or none; the
    bag knows better. Also numbers the runs of one target id (a repeated or re-stamped announcement continues its
    run), so that a sample never spans a target change."""

    def __init__(self, topics: AgentTopics, config):
        from m2vae_fusion.core.agent import TargetTimeline

        self.topics, self.config = topics, config
        self.timeline = TargetTimeline(config.target_history)
        self.runs: dict = {}  # Target -> run index

    def set_targets(self, announcements) -> None:
        """The agent's TargetOfInterest messages ``[(header stamp ns, message)]`` of one bag (any order)."""
        from m2vae_fusion.core.agent import TargetTimeline, ns_to_s

        self.timeline = TargetTimeline(max(1, len(announcements)))  # the whole bag, not the node's sliding window
        for stamp_ns, msg in announcements:
            pos = (float(msg.position.x), float(msg.position.y), float(msg.position.z)) if msg.has_position else None
            self.timeline.add(ns_to_s(stamp_ns), str(msg.target_id), str(msg.header.frame_id), pos)
        self.runs, prev, run = {}, None, -1
        for entry in self.timeline.entries():  # oldest first
            if entry.target_id != prev:
                run, prev = run + 1, entry.target_id
            self.runs[entry] = run

    def admit(self, stamp_ns: int, receive_ns: int):
        """``(segment, crop position)`` of an observation, None between targets. Raises
        :class:`~m2vae_fusion.core.agent.Drop` (STALE / FUTURE) as the node's admission does, ``receive_ns`` (the
        bag's receive time) standing for the node's clock."""
        from m2vae_fusion.core.agent import admit_observation, crop_position, ns_to_s

        target = admit_observation(self.timeline, ns_to_s(stamp_ns), ns_to_s(receive_ns), self.config)
        if not self.topics.target:
            return (0, None), None
        if target is None:
            return None
        return (self.runs.get(target, -1), target.target_id), crop_position(target, self.config.base_frame)


def _read_bag(bag, reader, agents, types, sensors, store, cloud_z, tally: _Tally, bar, config):
    """Deserialise, admit and convert every message of the agents' topics in one bag: first the target announcements
    of each agent (its timeline, :class:`_AgentPolicy`), then the sensor messages in bag (receive) order, each through
    the node's stamp checks (``config``, an :class:`~m2vae_fusion.core.agent.AgentConfig`, against the receive time)
    and target look-up before it is converted (:func:`convert`).

    Returns ``obs[(agent, modality)] = [_Observation]``."""
    from m2vae_fusion.core.agent import Drop, drop_from
    from m2vae_fusion.core.messages import stamp_to_ns
    from m2vae_fusion.core.preprocess import PreprocessError
    from m2vae_fusion.core.reasons import DropReason

    conns = [c for c in reader.connections if types.get(c.topic) == c.msgtype]
    roles = defaultdict(list)  # topic -> [(agent, role)]
    for k, a in enumerate(agents):
        for role in (*MODALITIES, "target"):
            if getattr(a, role):
                roles[getattr(a, role)].append((k, role))
    policies = [_AgentPolicy(a, config) for a in agents]
    obs = defaultdict(list)
    n_read = 0

    def messages(selected):
        """(connection, receive ns, message) of ``selected``, counting reads and deserialisation failures."""
        nonlocal n_read
        for conn, t_bag, raw in reader.messages(connections=selected):
            n_read += 1
            bar.update(1)
            tally.read[conn.topic] += 1
            try:
                yield conn, int(t_bag), store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:
                tally.drop(conn.topic, "deserialize", _one_line(exc))

    try:
        announcements = defaultdict(list)  # agent -> [(stamp ns, TargetOfInterest)]
        target_conns = [c for c in conns if any(r == "target" for _, r in roles[c.topic])]
        if target_conns:
            for conn, _, msg in messages(target_conns):
                for k, _ in roles[conn.topic]:
                    announcements[k].append((stamp_to_ns(msg.header.stamp), msg))
        for k, p in enumerate(policies):
            p.set_targets(announcements[k])
        sensor_conns = [c for c in conns if c not in target_conns]
        for conn, t_bag, msg in (messages(sensor_conns) if sensor_conns else ()):
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp == 0:  # unstamped driver: fall back to the receive time
                stamp = t_bag
                tally.stamps_from_bag_time += 1
            for k, role in roles[conn.topic]:
                try:
                    where = policies[k].admit(stamp, t_bag)
                except Drop as exc:
                    tally.drop(conn.topic, str(exc.reason), str(exc))
                    continue
                if where is None:
                    tally.no_target[conn.topic] += 1
                    continue
                segment, pos = where
                try:
                    x = convert(role, msg, conn.msgtype, sensors, cloud_z, target_position=pos)
                except Exception as exc:  # the node's reasons: conversion's own, PREPROCESS, else INTERNAL_ERROR
                    d = Drop(DropReason.PREPROCESS, str(exc)) if isinstance(exc, PreprocessError) else \
                        drop_from(exc, prefix="" if getattr(exc, "reason", None) else f"{type(exc).__name__}: ")
                    tally.drop(conn.topic, str(d.reason), str(d))
                    continue
                obs[(k, role)].append(_Observation(stamp, x, conn.topic, segment, pos))
    except Exception as exc:  # a storage file broken in the middle
        raise _user_error(f"bag {bag} is corrupt after {n_read} messages: {_one_line(exc)}") from None
    return obs


def _bag_samples(bag, agents, obs, labels, bag_start, max_dt, tally: _Tally):
    """Group one bag's observations into samples per agent and target run (see :func:`group`).
    Returns ``(infos, arrays)``: a :class:`SampleInfo` and a ``{modality: array}`` per sample (plus
    ``"target_position"``: the crop position of its camera, else LiDAR, else reflectance observation, or None)."""
    infos, arrays = [], []
    for k, a in enumerate(agents):
        segments = defaultdict(list)  # (run, target) -> [(stamp, modality, index)]
        for m in MODALITIES:
            for i, o in enumerate(obs[(k, m)]):
                segments[o.segment].append((o.stamp, m, i))
        for run, tid in sorted(segments, key=lambda x: (x[0], x[1] or "")):
            for grp in group(segments[(run, tid)], int(round(max_dt * 1e9))):
                got = {m: obs[(k, m)][i] for m, i in grp.items()}
                stamps = {m: o.stamp for m, o in got.items()}
                info = SampleInfo(bag=bag, agent=k, target=tid, stamps=stamps,
                                  topics={m: o.topic for m, o in got.items()})
                if labels is not None:
                    info.label = labels.label(tid, min(stamps.values()), bag_start)
                    if info.label < 0 and tid is not None:
                        tally.unknown_label_targets.add(tid)
                infos.append(info)
                sample = {m: o.array for m, o in got.items()}
                # the crop position of the first modality in canonical order (camera, then LiDAR: the cropped ones)
                sample["target_position"] = next((got[m].position for m in MODALITIES if m in got), None)
                arrays.append(sample)
    return infos, arrays


def _shard_arrays(idx, infos, arrays, sensors, class_names, positions: bool = False):
    """The shard arrays of docs/formats.md for the samples ``idx`` (missing modalities hold zeros); with
    ``positions`` also ``target_position`` float32 (N, 3) (NaN rows: no usable position, the crops' fallback)."""
    import numpy as np

    from m2vae_fusion.data.classes import CLASS_NAMES, attributes_of

    m = len(idx)
    h, w = int(sensors["camera"]["height"]), int(sensors["camera"]["width"])
    beams, k_refl = int(sensors["lidar"]["beams"]), int(sensors["reflectance"]["beams"])
    out = {"camera": np.zeros((m, h, w, 3), np.uint8), "lidar": np.zeros((m, beams), np.float32),
           "reflectance": np.zeros((m, k_refl, 2), np.float32), "present": np.zeros((m, 3), bool),
           "label": np.full(m, -1, np.int64), "colour": np.full(m, -1, np.int64),
           "shape": np.full(m, -1, np.int64), "material": np.full(m, -1, np.int64)}
    if positions:
        out["target_position"] = np.full((m, 3), np.nan, np.float32)
    for row, i in enumerate(idx):
        if positions and arrays[i].get("target_position") is not None:
            out["target_position"][row] = arrays[i]["target_position"]
        for j, mod in enumerate(MODALITIES):
            if mod in arrays[i]:
                out[mod][row] = arrays[i][mod]
                out["present"][row, j] = True
        lab = infos[i].label
        out["label"][row] = lab
        if lab >= 0 and class_names[lab] in CLASS_NAMES:  # attributes of the standard classes only
            out["colour"][row], out["shape"][row], out["material"][row] = \
                attributes_of(CLASS_NAMES.index(class_names[lab]))
    return out


def _resolve_labels(bags, readers, labels_file, use_ground_truth, write_labels):
    """Labels per bag (the labels file, else the bag's ground truth, else None), the common class names, a
    description of the source; writes ``write_labels`` when asked."""
    per_bag = []
    for bag, r in zip(bags, readers):
        if labels_file is not None:
            per_bag.append(labels_file)
        elif use_ground_truth:
            per_bag.append(ground_truth_labels(bag, r))
        else:
            per_bag.append(None)
    named = [lb for lb in per_bag if lb is not None]
    class_names = named[0].class_names if named else None
    for lb in named:
        if lb.class_names != class_names:
            raise _user_error(f"{lb.source} has class_names {lb.class_names}, {named[0].source} has "
                              f"{class_names}: the bags cannot share one data set")
    if labels_file is not None:
        source = labels_file.source
    elif named:
        source = f"{GROUND_TRUTH_TOPIC} ({len(named)} of {len(bags)} bag(s))"
    else:
        source = "none (unlabelled: class_names null, label -1)"
    if write_labels:
        if not named:
            raise _user_error(f"--write-labels {write_labels}: no labels (no --labels and no {GROUND_TRUTH_TOPIC} "
                              "in the bags)")
        merged = Labels(list(class_names), source=", ".join(lb.source for lb in named))
        merged.ranges, merged.absolute = list(named[0].ranges), named[0].absolute
        for lb in named:
            for t, k in lb.targets.items():
                if merged.targets.get(t, k) != k:
                    raise _user_error(f"--write-labels: the bags' ground truths disagree about target {t}; "
                                      "extract them one at a time")
                merged.targets[t] = k
        write_labels_file(write_labels, merged)
    return per_bag, class_names, source


def _crop_source(path: str):
    """``(configs per modality, file)`` of a bundle (``manifest.json``: ``inputs.<m>.preprocessing``) or a data set
    (``metadata.json``: ``sensors``). Raises UserError for anything else."""
    for name, key in (("manifest.json", "inputs"), ("metadata.json", "sensors")):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                doc = json.load(fh)
            block = doc[key]
            cfgs = {m: dict(block[m]["preprocessing"] if key == "inputs" else block[m]) for m in block
                    if m in MODALITIES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _user_error(f"--crop-like {f} cannot be read: {_one_line(exc)}") from None
        return cfgs, f
    raise _user_error(f"--crop-like {path}: neither a bundle (manifest.json) nor a data set (metadata.json)")


def _scale_k(k, sx: float, sy: float) -> list:
    """Row-major 3x3 intrinsics of an image resized by ``sx`` x ``sy`` (first row times ``sx``, second times ``sy``),
    as :func:`m2vae_fusion.core.preprocess.camera_intrinsics` scales a config's K."""
    k = [float(v) for v in k]
    return [k[0] * sx, k[1] * sx, k[2] * sx, k[3] * sy, k[4] * sy, k[5] * sy, k[6], k[7], k[8]]


def target_centred_configs(crop_like: str, sensors: dict, bags, readers, agents, store,
                           camera_to_base=None) -> dict:
    """Switch the target-centred preprocessing of the bundle or data set ``crop_like`` on in the data set's
    ``sensors`` (in place): its ``crop`` blocks for camera and LiDAR, and for the camera crop the intrinsics ``K`` of
    the 64x64 training image (the first usable ``CameraInfo.k`` of an agent's camera in the bags, scaled from its
    size; else ``crop_like``'s ``K`` or ``fov_deg``) and ``camera_to_base`` (``camera_to_base`` (x, y, z) m, else
    ``crop_like``'s). Training then crops through :mod:`m2vae_fusion.core.preprocess` around each sample's
    ``target_position``, as the node does. Returns what was used, for ``metadata.json["rosbag"]["preprocessing"]``.

    Raises:
        UserError: ``crop_like`` unreadable or without an enabled crop; a camera crop without intrinsics or without
            a camera-to-base translation; a ``camera_to_base`` that is not 3 finite numbers.
    """
    from m2vae_fusion.core.messages import camera_info_k
    from m2vae_fusion.core.preprocess import crop_config

    src, where = _crop_source(crop_like)
    done = {"crop_like": where}
    for m in ("camera", "lidar"):
        crop = crop_config(src.get(m, {}))
        if crop:
            sensors[m]["crop"] = dict(crop)
            done[f"{m}_crop"] = dict(crop)
    if "camera_crop" not in done and "lidar_crop" not in done:
        raise _user_error(f"--crop-like {where}: no enabled camera or lidar crop in it")
    if "camera_crop" not in done:
        return done
    cam, s_cam = sensors["camera"], src.get("camera", {})
    w, h = int(cam["width"]), int(cam["height"])
    for bag, reader in zip(bags, readers):
        for a in agents:
            topic = a.camera_info_topic()
            if not topic or not any(c.topic == topic and c.msgtype == CAMERA_INFO for c in reader.connections):
                continue
            msg = _first_message(reader, topic, store, lambda x: camera_info_k(x) is not None)
            if msg is not None and "K" not in cam:
                (mw, mh), k = camera_info_k(msg)
                cam["K"] = _scale_k(k, w / mw, h / mh)
                done["camera_K"] = f"CameraInfo.k on {topic} ({mw}x{mh}) in {bag}, scaled to {w}x{h}"
    if "K" not in cam:
        if "K" in s_cam and "width" in s_cam and "height" in s_cam:
            cam["K"] = _scale_k(s_cam["K"], w / float(s_cam["width"]), h / float(s_cam["height"]))
            done["camera_K"] = f"K of {where}, scaled to {w}x{h}"
        elif "fov_deg" in s_cam:
            cam["fov_deg"] = float(s_cam["fov_deg"])
            if "aspect" in s_cam:
                cam["aspect"] = float(s_cam["aspect"])
            done["camera_K"] = f"fov_deg of {where}"
        else:
            raise _user_error(f"the camera crop needs the camera's intrinsics: no CameraInfo (camera_info beside the "
                              f"image topic) in the bags and no K or fov_deg in {where}")
    if camera_to_base is not None:
        t = [float(v) for v in camera_to_base]
        if len(t) != 3 or not all(math.isfinite(v) for v in t):
            raise _user_error(f"--camera-to-base must be 3 finite numbers X Y Z (m), got {camera_to_base}")
        cam["camera_to_base"] = {"translation": t}
        done["camera_to_base"] = "--camera-to-base"
    elif isinstance(s_cam.get("camera_to_base"), Mapping) and "translation" in s_cam["camera_to_base"]:
        cam["camera_to_base"] = {"translation": [float(v) for v in s_cam["camera_to_base"]["translation"]]}
        done["camera_to_base"] = f"camera_to_base of {where}"
    else:
        raise _user_error(f"the camera crop needs the camera's position on the robot: give --camera-to-base X Y Z "
                          f"(m, base frame; {where} has none)")
    return done


def extract_bags(bags: Sequence[str], out: str, agents: Sequence[AgentTopics], *, labels_path: Optional[str] = None,
                 use_ground_truth: bool = True, write_labels: Optional[str] = None, max_dt: float = 0.1,
                 seed: int = 7, overwrite: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 shard_size: int = 1000, cloud_z=(-0.1, 0.1), intensity_max: float = 1.0,
                 max_message_age: float = 2.0, future_tolerance: float = 0.5, base_frame: str = "base_link",
                 crop_like: Optional[str] = None, camera_to_base=None, progress: bool = True) -> Extraction:
    """Extract a data set from ``bags`` into ``out`` (see the module docstring). Returns what was done.

    ``max_message_age``, ``future_tolerance`` (s) and ``base_frame`` are the fusion node's parameters of the same
    names (its stamp checks against the receive time, and the frame of usable TargetOfInterest positions);
    ``crop_like`` and ``camera_to_base``: see :func:`target_centred_configs`.

    Raises:
        UserError: a missing or corrupt bag, a topic missing from a bag or of the wrong type, a bad labels file or a
            label naming an unknown class, bad numbers, no sample at all, an unusable ``out``, a bad ``crop_like``.
    """
    import numpy as np
    from tqdm import tqdm

    from m2vae_fusion.data import shards

    if not bags:
        raise _user_error("--from-bag needs at least one bag")
    if not (max_dt >= 0 and math.isfinite(max_dt)):
        raise _user_error(f"--max-dt must be a non-negative number of seconds, got {max_dt}")
    for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise _user_error(f"{name} must be in [0, 1) (got {f})")
    if val_fraction + test_fraction >= 1.0:
        raise _user_error("--val-fraction + --test-fraction leave no training samples")
    if shard_size <= 0:
        raise _user_error(f"--shard-size must be positive (got {shard_size})")
    if not intensity_max > 0:
        raise _user_error(f"--intensity-max must be positive (got {intensity_max})")
    if math.isnan(max_message_age) or math.isnan(future_tolerance) or future_tolerance < 0:
        raise _user_error(f"--max-message-age must be a number and --future-tolerance a non-negative one (got "
                          f"{max_message_age}, {future_tolerance})")
    from m2vae_fusion.core.agent import AgentConfig

    policy = AgentConfig(agent_id="bag", max_message_age=float(max_message_age),
                         future_tolerance=float(future_tolerance), base_frame=str(base_frame))
    labels_file = load_labels(labels_path) if labels_path else None
    store = typestore()
    readers = []
    try:
        types = {}
        for bag in bags:
            readers.append(open_bag(bag))
            types.update(_check_topics(bag, readers[-1], agents))
        shards.prepare_output_dir(out, overwrite)  # refuse a bad --out before the work
        sensors = sensor_configs(bags, readers, agents, types, store, intensity_max)
        crop = (target_centred_configs(crop_like, sensors, bags, readers, agents, store, camera_to_base)
                if crop_like else None)
        per_bag_labels, class_names, labels_source = _resolve_labels(bags, readers, labels_file, use_ground_truth,
                                                                     write_labels)
        tally = _Tally()
        infos: List[SampleInfo] = []
        arrays: List[dict] = []
        bag_info = []
        total = sum(c.msgcount for r in readers for c in r.connections if types.get(c.topic) == c.msgtype)
        bar = tqdm(total=total, unit="msg", desc="reading bags", disable=not progress or None, leave=False)
        try:
            for bag, r, labels in zip(bags, readers, per_bag_labels):
                obs = _read_bag(bag, r, agents, types, sensors, store, cloud_z, tally, bar, policy)
                start = int(r.start_time) if r.message_count else 0
                i, a = _bag_samples(bag, agents, obs, labels, start, max_dt, tally)
                infos += i
                arrays += a
                bag_info.append({"path": os.path.abspath(bag), "messages": int(r.message_count),
                                 "duration_s": round(r.duration * 1e-9, 3) if r.message_count else 0.0,
                                 "storage": _storage_of(bag)})
        finally:
            bar.close()
        n = len(infos)
        if n == 0:
            why = ", ".join(f"{t} {rsn} {c}" for (t, rsn), c in sorted(tally.dropped.items()))
            raise _user_error(f"no samples: nothing usable in {', '.join(bags)} (read {sum(tally.read.values())} "
                              f"messages; outside any target {sum(tally.no_target.values())}; dropped: "
                              f"{why or 'none'})")
        # shuffle (seeded), split, write
        order = np.random.default_rng(seed).permutation(n)
        n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
        n_train = n - n_val - n_test
        parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        entries, index = [], {}
        for split in shards.SPLITS:
            idx = parts[split]
            index[split] = [infos[i] for i in idx]
            for s, first in enumerate(range(0, len(idx), shard_size)):
                part = _shard_arrays(idx[first:first + shard_size], infos, arrays, sensors, class_names,
                                     positions=crop is not None)
                try:
                    entries.append(shards.write_shard(out, split, s, part))
                except ValueError as exc:
                    raise _user_error(f"cannot write {shards.shard_name(split, s)}: {exc}") from None
        meta = shards.make_metadata("rosbag", seed, sensors, entries, class_names)
        n_pos = sum(1 for a in arrays if a.get("target_position") is not None)
        meta["rosbag"] = {"bags": bag_info, "agents": [vars(a) for a in agents], "max_dt": max_dt,
                          "labels": labels_source,
                          "preprocessing": {
                              "stamp_checks": {  # null: off
                                  "max_message_age": float(max_message_age) if max_message_age > 0 else None,
                                  "future_tolerance": float(future_tolerance) if math.isfinite(future_tolerance)
                                  else None, "clock": "bag receive time"},
                              "base_frame": str(base_frame),
                              "target_centred": crop,
                              "samples_with_target_position": n_pos if crop is not None else None}}
        shards.write_metadata(out, meta)
        rigs = [set(a.sensors()) for a in agents]
        return Extraction(metadata=meta, bags=bag_info, read=tally.read, dropped=tally.dropped,
                          drop_examples=tally.examples, no_target=tally.no_target,
                          subsets=Counter(subset_key([m for m in MODALITIES if m in a]) for a in arrays),
                          partial=sum(1 for s in infos if set(s.stamps) != rigs[s.agent]),
                          labelled=sum(1 for s in infos if s.label >= 0), labels_source=labels_source,
                          unknown_label_targets=sorted(tally.unknown_label_targets), index=index,
                          stamps_from_bag_time=tally.stamps_from_bag_time,
                          preprocessing=meta["rosbag"]["preprocessing"])
    finally:
        for r in readers:
            try:
                r.close()
            except Exception:
                pass


def _storage_of(bag: str) -> str:
    if os.path.isdir(bag):
        if glob.glob(os.path.join(bag, "*.mcap")):
            return "mcap"
        if glob.glob(os.path.join(bag, "*.db3")):
            return "sqlite3"
        return "?"
    return "mcap" if bag.endswith(".mcap") else "sqlite3"


def format_summary(ex: Extraction, out: str = "") -> str:
    """The end-of-run summary: messages per topic, drops by reason, samples per split and per subset of modalities,
    partial and unlabelled samples."""
    L = []
    for b in ex.bags:
        L.append(f"bag {b['path']} ({b['storage']}, {b['duration_s']:.1f} s, {b['messages']} messages)")
    L.append("messages read per topic:")
    width = max((len(t) for t in ex.read), default=10)
    for t, c in sorted(ex.read.items()):
        L.append(f"  {t:<{width}}  {c}")
    if ex.dropped:
        L.append("messages dropped:")
        for (t, reason), c in sorted(ex.dropped.items()):
            L.append(f"  {t:<{width}}  {reason:<12} {c:>6}  ({REASONS.get(reason, reason)}; e.g. "
                     f"{ex.drop_examples.get((t, reason), '')})")
    else:
        L.append("messages dropped: none")
    if ex.no_target:
        L.append("observations outside any target of interest (left out): "
                 + ", ".join(f"{t} {c}" for t, c in sorted(ex.no_target.items())))
    if ex.stamps_from_bag_time:
        L.append(f"observations with a zero header stamp (bag receive time used): {ex.stamps_from_bag_time}")
    splits = ex.metadata["splits"]
    total = sum(splits.values())
    L.append(f"samples written: {total} (" + ", ".join(f"{k} {v}" for k, v in splits.items()) + ")"
             + (f" to {out}" if out else ""))
    L.append("samples per subset of modalities:")
    for key, c in sorted(ex.subsets.items(), key=lambda kv: (-kv[1], kv[0])):
        L.append(f"  {key:<26} {c}")
    L.append(f"partial samples (a modality of the agent's rig had no partner within "
             f"{ex.metadata['rosbag']['max_dt']} s; kept, marked missing): {ex.partial}")
    crop = (ex.preprocessing or {}).get("target_centred")
    if crop:
        L.append(f"target-centred preprocessing like {crop['crop_like']}: target positions (in "
                 f"{ex.preprocessing['base_frame']}) for {ex.preprocessing['samples_with_target_position']} of "
                 f"{total} samples (the others: the crops' fallback)"
                 + (f"; camera K: {crop['camera_K']}" if "camera_K" in crop else ""))
    L.append(f"labels: {ex.labels_source}; labelled samples {ex.labelled} of {total}")
    if ex.unknown_label_targets:
        L.append(f"targets without a label (label -1): {', '.join(ex.unknown_label_targets)}")
    return "\n".join(L)


def run_cli(args) -> int:
    """``m2vae-fusion dataset --from-bag …`` (called from m2vae_fusion.commands.dataset)."""
    import time

    if not args.out:
        raise _user_error("--from-bag writes a data set: give --out DIR (not --check)")
    if args.labels and args.no_labels:
        raise _user_error("--labels and --no-labels exclude each other")
    agents = agents_from_options(args.camera_topic, args.lidar_topic, args.reflectance_topic, args.target_topic)
    t0 = time.perf_counter()
    ex = extract_bags(args.from_bag, args.out, agents, labels_path=args.labels, use_ground_truth=not args.no_labels,
                      write_labels=args.write_labels, max_dt=args.max_dt, seed=args.seed, overwrite=args.overwrite,
                      val_fraction=getattr(args, "val_fraction", 0.1),
                      test_fraction=getattr(args, "test_fraction", 0.1),
                      shard_size=getattr(args, "shard_size", 1000), cloud_z=tuple(args.cloud_z),
                      intensity_max=args.intensity_max, max_message_age=args.max_message_age,
                      future_tolerance=args.future_tolerance, base_frame=args.base_frame, crop_like=args.crop_like,
                      camera_to_base=args.camera_to_base, progress=not getattr(args, "no_progress", False))
    print(format_summary(ex, args.out))
    if args.write_labels:
        print(f"wrote labels file {args.write_labels}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
