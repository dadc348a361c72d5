"""The simulated-world node: a PyBullet AMiRo world (m2vae_fusion.sim.World) with K agents touring the objects.

Each agent inspects every object in turn: a transit (target of interest empty, the robot moves along a straight line)
then an inspection (target of interest = the object, the robot stands ``inspect_distance`` m from it, looking outward
from the arena centre and slowly panning; in the hard world each visit approaches from a side drawn within
``approach_spread`` of that direction, so a revisit sees the object from another side, at another distance and
under another light). Per agent ``<ns>`` = ``<agent_prefix><k>`` it publishes, at realistic
rates and only for the sensors of its rig:

- ``/<ns>/camera/image_raw`` sensor_msgs/Image (``camera_encoding``, default rgb8, ``camera_width`` x
  ``camera_height``, ``camera_rate`` Hz),
- ``/<ns>/scan`` sensor_msgs/LaserScan, or PointCloud2 with ``lidar_type: PointCloud2`` (``lidar_rate`` Hz),
- ``/<ns>/reflectance`` sensor_msgs/LaserScan with ranges + intensities of the IR ring (``reflectance_rate`` Hz),
- ``/<ns>/camera/camera_info`` sensor_msgs/CameraInfo with every image (same stamp and frame): the intrinsics ``k``
  of the rendered projection at the published size (:func:`m2vae_fusion.sim.hard.camera_intrinsics`, no
  distortion),
- ``/<ns>/target_of_interest`` m2vae_fusion_msgs/TargetOfInterest on every change (stamped with the time the new
  target became active) and repeated every second. While the agent inspects an object the message carries the
  object's centre in the agent's base frame (``target_frame``, default ``base_link``: x forward, y left, z up, origin
  on the floor under the robot's centre; what a perception pipeline gives, so the fusion node crops there without
  tf): the robot pans, so whenever that position has moved more than ``target_refresh_distance`` since the last
  message, a new message for the same target goes out, stamped with the time of the pose it was computed from and
  published before the sensor messages of that instant (at most once per sensor tick). With ``target_frame`` equal
  to ``frame_id`` the position is the object's centre in the world frame instead (fixed per visit),

and, for evaluation only, ``/sim/ground_truth`` std_msgs/String holding JSON (object ids → class name, id,
attributes and position; agent → target, pose, sensors), transient-local so late subscribers get the newest.

Worlds (``world`` parameter): ``easy`` (default; the 8 classes of the shipped bundles, the objects named by
``objects``) or ``hard`` (the 27-class world of :mod:`m2vae_fusion.sim.hard`: ``num_objects`` objects of classes
drawn by ``seed`` from all 27, unless ``objects`` names hard-world classes; its sensor noise, object sizes,
inspection distances (:func:`m2vae_fusion.sim.hard.inspection_distance`: the camera clear of the object;
``inspect_distance`` is the easy world's) and camera model, with light colour temperature and intensity drawn per
visit). In both
worlds the TargetOfInterest position is the object's centre (z = half its height), as in the hard data set's
``target_position``.

Time: every stamp and the tour schedule come from the node's ROS clock (wall time, or ``/clock`` with
``use_sim_time``), the same convention as the fusion node. No torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2
from std_msgs.msg import String

from m2vae_fusion.errors import UserError
from m2vae_fusion.core import messages as conv
from m2vae_fusion.ros.spin import process_exit, run_node
from m2vae_fusion.ros.params import declare_parameters
from m2vae_fusion_msgs.msg import TargetOfInterest

from m2vae_fusion.core.modalities import MODALITIES as SENSORS
CLASS_NAMES = [f"{c}_{s}_{m}" for c in ("red", "green") for s in ("cylinder", "cube") for m in ("matte", "shiny")]


@dataclass
class Phase:
    """Where an agent is in its tour at a time: transit towards or inspection of ``obj`` (index)."""

    visit: int
    obj: int
    inspecting: bool
    start: float  # s since the tour's start


def parse_rig(spec: str) -> tuple:
    """``"all"`` or ``"camera+lidar"`` (also ``,`` or spaces) → sensors in canonical order.

    Raises:
        UserError: an unknown sensor name or an empty rig.
    """
    s = spec.strip().lower()
    if s in ("", "all"):
        return SENSORS
    names = [n for n in s.replace(",", "+").replace(" ", "+").split("+") if n]
    bad = [n for n in names if n not in SENSORS]
    if bad or not names:
        raise UserError(f"sensor rig {spec!r}: unknown sensors {bad}; use 'all' or names from {list(SENSORS)}")
    return tuple(m for m in SENSORS if m in names)


def tour_classes(seed: int, n: int) -> list:
    """The hard world's demo tour: ``n`` class ids drawn by ``seed`` from all 27 (without repeats up to 27)."""
    from m2vae_fusion.data.classes import classes_of

    k = classes_of("hard").num_classes
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(27,)))
    out = []
    while len(out) < n:
        out += [int(c) for c in rng.permutation(k)]
    return out[:n]


def to_base_frame(pose, point) -> tuple:
    """A world-frame point ``(x, y, z)`` (m) in the base frame of a robot at ``pose`` ``(x, y, yaw)`` (m, rad; yaw
    counter-clockwise from world x): x forward, y left, z up (REP 103), origin on the floor under the robot's centre.
    Returns ``(x, y, z)`` floats (m)."""
    px, py, yaw = (float(v) for v in pose)
    dx, dy = float(point[0]) - px, float(point[1]) - py
    c, s = math.cos(yaw), math.sin(yaw)
    return c * dx + s * dy, -s * dx + c * dy, float(point[2])


class Tour:
    """The inspection schedule of one agent: visit ``v`` goes to object ``(first + v) % n``; each visit is a
    transit of ``transit`` s then an inspection of ``inspect`` s."""

    def __init__(self, first: int, n_objects: int, inspect: float, transit: float):
        self.first, self.n = first, n_objects
        self.inspect, self.transit = inspect, transit

    def phase(self, t: float) -> Phase:
        period = self.inspect + self.transit
        visit = int(max(t, 0.0) // period)
        into = max(t, 0.0) - visit * period
        obj = (self.first + visit) % self.n
        if into < self.transit:
            return Phase(visit, obj, False, visit * period)
        return Phase(visit, obj, True, visit * period + self.transit)


class SimWorldNode(Node):
    """See the module docstring."""

    PARAMS = [
        ("num_agents", 2, "Number of agents K"),
        ("agent_prefix", "agent", "Agent k publishes under the namespace /<agent_prefix><k> and has id <prefix><k>"),
        ("sensors", ["all"], "Sensor rig per agent ('all', 'camera', 'lidar+reflectance', ...); the last entry "
                             "repeats for further agents"),
        ("world", "easy", "Simulated world: easy (8 classes) or hard (27 classes, m2vae_fusion.sim.hard)"),
        ("objects", CLASS_NAMES, "Class names of the objects to place (one object each), e.g. red_cube_shiny; in the "
                                 "hard world, left at this (easy) default, num_objects classes drawn by the seed"),
        ("num_objects", 10, "Hard world: number of objects when objects is left at its default"),
        ("seed", 0, "Seed of object sizes, inspection distances and sensor noise"),
        ("object_circle_radius", 0.9, "Objects stand on a circle of this radius (m) around the arena centre, or a "
                                      "larger one that keeps them object_spacing apart"),
        ("object_spacing", 0.6, "Least distance (m) between neighbouring objects along the circle: the circle (and "
                                "the arena with it) grows with the number of objects, so that the 0.8 m IR ring "
                                "and the LiDAR window do not see the neighbours at every inspection (0: off)"),
        ("arena_size", 3.0, "Side of the square arena (m); grown to hold the circle with 0.6 m to spare"),
        ("inspect_duration", 4.0, "Seconds an agent inspects each object"),
        ("transit_duration", 1.0, "Seconds an agent travels between objects (no target of interest)"),
        ("inspect_distance", [0.15, 0.35], "Easy world: range (m) of the distance from the robot's rim to the object "
                                           "centre (the hard world draws the data set's distances)"),
        ("heading_jitter", 0.15, "Amplitude (rad) of the slow pan while inspecting"),
        ("approach_spread", 0.785, "Hard world: each visit approaches the object from a side drawn within this "
                                   "angle (rad) of the arena centre's side, so revisits see it from another side; "
                                   "0: always from the centre (the easy world always is)"),
        ("camera_rate", 15.0, "Camera frames per second"),
        ("lidar_rate", 10.0, "LiDAR scans per second"),
        ("reflectance_rate", 10.0, "Reflectance scans per second"),
        ("camera_width", 160, "Published image width (px); the projection is the simulator's 4:3 camera"),
        ("camera_height", 120, "Published image height (px)"),
        ("camera_encoding", "rgb8", "Published image encoding: rgb8, bgr8, rgba8, bgra8 or mono8"),
        ("lidar_type", "LaserScan", "LiDAR message: LaserScan or PointCloud2"),
        ("camera_topic", "camera/image_raw", "Camera topic, relative to each agent's namespace"),
        ("lidar_topic", "scan", "LiDAR topic, relative to each agent's namespace"),
        ("reflectance_topic", "reflectance", "Reflectance topic, relative to each agent's namespace"),
        ("target_topic", "target_of_interest", "TargetOfInterest topic, relative to each agent's namespace"),
        ("ground_truth_topic", "/sim/ground_truth", "Ground truth (std_msgs/String, JSON) for evaluation only"),
        ("frame_id", "map", "World frame of the ground truth's positions and poses"),
        ("target_frame", "base_link", "Frame of the TargetOfInterest position: the agents' base frame (the fusion "
                                      "node's base_frame; position relative to the robot, refreshed as it moves), "
                                      "or frame_id for world positions"),
        ("target_refresh_distance", 0.0, "Base frame: a new TargetOfInterest goes out when the target's position "
                                         "moved more than this (m) since the last one (0: at every sensor tick "
                                         "while it moves; the shipped LiDAR β-VAE needs positions within a few mm)"),
        ("camera_info_topic", "camera/camera_info", "CameraInfo topic, relative to each agent's namespace; empty: "
                                                    "none"),
        ("noise", True, "Sensor noise on"),
    ]

    def __init__(self, **kwargs):
        super().__init__("sim_world", **kwargs)
        p = declare_parameters(self, self.PARAMS)
        self.p = p
        k = int(p["num_agents"])
        if not 1 <= k <= 16:
            raise UserError(f"parameter num_agents must be 1..16, got {k}")
        if p["camera_encoding"] not in conv.IMAGE_ENCODINGS:
            raise UserError(f"parameter camera_encoding must be one of {list(conv.IMAGE_ENCODINGS)}")
        if p["lidar_type"] not in ("LaserScan", "PointCloud2"):
            raise UserError(f"parameter lidar_type must be LaserScan or PointCloud2, got {p['lidar_type']!r}")
        if not str(p["target_frame"]).strip():
            raise UserError("parameter target_frame must name a frame (the fusion node's base_frame, e.g. base_link, "
                            "or frame_id for world positions)")
        if not (float(p["target_refresh_distance"]) >= 0 and math.isfinite(float(p["target_refresh_distance"]))):
            raise UserError(f"parameter target_refresh_distance must be a finite number >= 0 (m), got "
                            f"{p['target_refresh_distance']!r}")
        #: positions in the agents' base frames (relative to the moving robot) or in the world frame
        self.base_target = p["target_frame"] != p["frame_id"]
        from m2vae_fusion.data.classes import WORLDS

        if p["world"] not in WORLDS:
            raise UserError(f"parameter world must be one of {sorted(WORLDS)}, got {p['world']!r}")
        self.hard = p["world"] == "hard"
        classes = WORLDS[p["world"]]
        self.class_names = classes.class_names
        rng = np.random.default_rng(int(p["seed"]))
        objects = list(p["objects"])
        if self.hard and objects == CLASS_NAMES:
            n_obj = int(p["num_objects"])
            if not 1 <= n_obj <= 64:
                raise UserError(f"parameter num_objects must be 1..64, got {n_obj}")
            objects = [self.class_names[int(c)] for c in tour_classes(int(p["seed"]), n_obj)]
        bad = [c for c in objects if c not in self.class_names]
        if bad or not objects:
            raise UserError(f"parameter objects: unknown class names {bad}; expected names from {self.class_names}")
        self.object_names = objects
        rigs = list(p["sensors"]) or ["all"]
        self.rigs = [parse_rig(rigs[min(i, len(rigs) - 1)]) for i in range(k)]
        self.names = [f"{p['agent_prefix']}{i}" for i in range(k)]

        from m2vae_fusion.sim.sensors import AMIRO_RADIUS
        from m2vae_fusion.sim.world import ObjectSpec, World

        spacing = float(p["object_spacing"])
        if not (math.isfinite(spacing) and 0.0 <= spacing <= 5.0):
            raise UserError(f"parameter object_spacing must be in [0, 5] m, got {p['object_spacing']!r}")
        #: radius (m) of the objects' circle and side (m) of the arena in use
        self.circle_radius = max(float(p["object_circle_radius"]), len(objects) * spacing / (2 * math.pi))
        self.arena_size = max(float(p["arena_size"]), 2 * (self.circle_radius + 0.6))
        if self.hard:
            from m2vae_fusion.sim import hard as hard_world
            from m2vae_fusion.sim.sensors import CameraConfig, LidarConfig, ReflectanceConfig

            self.world = World(num_agents=k, camera=CameraConfig(), lidar=LidarConfig(**hard_world.HARD_LIDAR),
                               reflectance=ReflectanceConfig(**hard_world.HARD_REFLECTANCE), seed=int(p["seed"]),
                               arena_size=self.arena_size, walls=True, clutter=0)
        else:
            self.world = World(num_agents=k, seed=int(p["seed"]), arena_size=self.arena_size, walls=True,
                               clutter=0)
        n = len(objects)
        self.objects = []  # (object id string, pybullet id, spec, (x, y), bearing from centre)
        for j, cname in enumerate(objects):
            a = 2 * math.pi * j / n
            x, y = self.circle_radius * math.cos(a), self.circle_radius * math.sin(a)
            if self.hard:
                obj = hard_world.draw_object(rng, self.class_names.index(cname))
                spec = ObjectSpec(*obj["names"], obj["height"], obj["width"], obj["rgb"], obj["ir"], world="hard",
                                  corner=obj["corner"])
            else:
                colour, shape, material = cname.split("_")
                height = float(rng.uniform(0.05, 0.08))
                width = float(rng.uniform(0.036, 0.055))
                spec = ObjectSpec(colour, shape, material, height, width)
            oid = self.world.add_object(spec, x, y, float(rng.uniform(0, 2 * math.pi)))
            self.objects.append((f"object_{j}", oid, spec, (x, y), a))
        self.rim = AMIRO_RADIUS
        if self.hard:  # gaps drawn as the data set draws them; the inspected object turns them into distances
            lo, hi = hard_world.SCENE["distance_from_rim"]
            self.distances = rng.uniform(lo, hi, size=(k, 4 * n + 1))
            # light per agent and visit: colour temperature (K) and intensity, as in the data set
            warm = rng.uniform(size=(k, 4 * n + 1)) < hard_world.SCENE["warm_light_probability"]
            self.kelvin = np.where(warm, rng.uniform(*hard_world.SCENE["warm_colour_temperature_k"], size=warm.shape),
                                   rng.uniform(*hard_world.SCENE["colour_temperature_k"], size=warm.shape))
            lo_i, hi_i = hard_world.SCENE["light_intensity"]
            self.intensity = np.exp(rng.uniform(math.log(lo_i), math.log(hi_i), size=warm.shape))
            spread = float(p["approach_spread"])
            if not (math.isfinite(spread) and 0.0 <= spread <= math.pi / 2):
                raise UserError(f"parameter approach_spread must be in [0, pi/2] rad, got {p['approach_spread']!r}")
            # the side each agent's visit approaches from (drawn after everything else: other draws unchanged)
            self.approach = rng.uniform(-spread, spread, size=warm.shape)
        else:
            lo, hi = (list(p["inspect_distance"]) + [0.35])[:2]
            self.distances = rng.uniform(lo, hi, size=(k, 4 * n + 1))  # per agent and visit (cycled)
            self.approach = np.zeros_like(self.distances)
        self.tours = [Tour((i * n) // k, n, p["inspect_duration"], p["transit_duration"]) for i in range(k)]
        for i in range(k):  # park each agent at the arena centre, facing its first object
            self.world.set_agent_pose(i, 0.2 * math.cos(2 * math.pi * i / k), 0.2 * math.sin(2 * math.pi * i / k),
                                      self.objects[self.tours[i].first][4])
        self._start_pose = [self.world.agent_pose(i) for i in range(k)]

        rel = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # targets: a refresh goes out at every sensor tick (~35 Hz for a full rig); with a history of 1 a reader that
        # fell behind under load lost the change announcements in between (seen in CI: 1.2 s of a tour missing)
        target_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        lidar_msg = PointCloud2 if p["lidar_type"] == "PointCloud2" else LaserScan
        self.pubs = []
        for i, ns in enumerate(self.names):
            pubs = {"target": self.create_publisher(TargetOfInterest, f"/{ns}/{p['target_topic']}", target_qos)}
            if "camera" in self.rigs[i]:
                pubs["camera"] = self.create_publisher(Image, f"/{ns}/{p['camera_topic']}", rel)
                if p["camera_info_topic"]:
                    pubs["camera_info"] = self.create_publisher(CameraInfo, f"/{ns}/{p['camera_info_topic']}", rel)
            if "lidar" in self.rigs[i]:
                pubs["lidar"] = self.create_publisher(lidar_msg, f"/{ns}/{p['lidar_topic']}", rel)
            if "reflectance" in self.rigs[i]:
                pubs["reflectance"] = self.create_publisher(LaserScan, f"/{ns}/{p['reflectance_topic']}", rel)
            self.pubs.append(pubs)
        self.pub_truth = self.create_publisher(String, p["ground_truth_topic"], latched)
        self.t0_ns = self.get_clock().now().nanoseconds
        self._targets = [None] * k  # last published TargetOfInterest per agent
        self._since = [0] * k       # ns: when each agent's current target became active
        self._target_pose = [None] * k  # the robot pose (x, y, yaw) its last target position was computed from
        self._target_obj = [None] * k   # index of the object of its current target (None: no target)
        from m2vae_fusion.sim.hard import camera_intrinsics

        self.camera_k = camera_intrinsics(self.world.camera, int(p["camera_width"]), int(p["camera_height"]))
        self._lidar = self.world.lidar_info()
        refl = self.world.reflectance_info()
        self._refl_cfg = {"angle_min": 0.0, "angle_increment": 2 * math.pi / refl["beams"], "range_min": 0.0,
                          "range_max": refl["range_max"]}
        self.counts = {m: 0 for m in SENSORS}
        for m, rate in (("camera", p["camera_rate"]), ("lidar", p["lidar_rate"]),
                        ("reflectance", p["reflectance_rate"])):
            if rate > 0 and any(m in r for r in self.rigs):
                self.create_timer(1.0 / rate, lambda m=m: self._tick(m))
        self.create_timer(0.05, self._schedule)
        self.create_timer(1.0, self._republish)
        self._schedule()
        self.get_logger().info(
            f"{k} agent(s) {self.names} with rigs {[list(r) for r in self.rigs]} touring {n} objects "
            f"({p['inspect_duration']} s each + {p['transit_duration']} s transit); camera "
            f"{p['camera_width']}x{p['camera_height']} {p['camera_encoding']} at {p['camera_rate']} Hz, "
            f"lidar ({p['lidar_type']}) {p['lidar_rate']} Hz, reflectance {p['reflectance_rate']} Hz; "
            f"ground truth on {p['ground_truth_topic']}")

    # -- schedule -----------------------------------------------------------------------------------------------
    def _t(self, now_ns: int) -> float:
        return (now_ns - self.t0_ns) * 1e-9

    def _inspect_pose(self, agent: int, visit: int, obj: int):
        _, _, _, (ox, oy), bearing = self.objects[obj]
        gap = float(self.distances[agent, visit % self.distances.shape[1]])
        if self.hard:  # as the data set places the robot (camera clear of the object: sim.hard.inspection_distance)
            from m2vae_fusion.sim.hard import inspection_distance

            d = inspection_distance(gap, self.objects[obj][2])
        else:
            d = self.rim + gap
        bearing += float(self.approach[agent, visit % self.approach.shape[1]])
        return ox - d * math.cos(bearing), oy - d * math.sin(bearing), bearing

    def _pose(self, agent: int, t: float):
        """The agent's pose (x, y, yaw) at tour time ``t`` (s)."""
        tour = self.tours[agent]
        ph = tour.phase(t)
        goal = self._inspect_pose(agent, ph.visit, ph.obj)
        if ph.inspecting:
            pan = self.p["heading_jitter"] * math.sin(2 * math.pi * (t - ph.start) / 3.0)
            return goal[0], goal[1], goal[2] + pan
        prev = self._start_pose[agent] if ph.visit == 0 else self._inspect_pose(
            agent, ph.visit - 1, (tour.first + ph.visit - 1) % tour.n)
        a = min(max((t - ph.start) / max(tour.transit, 1e-6), 0.0), 1.0)
        dyaw = (goal[2] - prev[2] + math.pi) % (2 * math.pi) - math.pi
        return prev[0] + a * (goal[0] - prev[0]), prev[1] + a * (goal[1] - prev[1]), prev[2] + a * dyaw

    def target(self, agent: int, t: float):
        """(target id or "", stamp offset s) of ``agent`` at tour time ``t``."""
        ph = self.tours[agent].phase(t)
        return (self.objects[ph.obj][0] if ph.inspecting else ""), ph.start

    def target_position(self, agent: int, t: float, obj: int | None = None):
        """((x, y, z) of the centre of the object ``agent`` inspects at tour time ``t`` (or of object index ``obj``)
        in ``target_frame`` (m), the robot pose (x, y, yaw) at ``t`` it was computed from); (None, pose) between
        objects."""
        pose = self._pose(agent, t)
        if obj is None:
            ph = self.tours[agent].phase(t)
            if not ph.inspecting:
                return None, pose
            obj = ph.obj
        _, _, spec, (x, y), _ = self.objects[obj]
        centre = (x, y, spec.height / 2)
        return (to_base_frame(pose, centre) if self.base_target else centre), pose

    def _announce(self, agent: int, tid: str, stamp_ns: int, obj: int | None) -> None:
        """Publish ``agent``'s TargetOfInterest ``tid`` stamped ``stamp_ns`` with the position of object ``obj``
        (None: no target) at that time."""
        pos, pose = self.target_position(agent, (stamp_ns - self.t0_ns) * 1e-9, obj) if obj is not None else \
            (None, None)
        frame = self.p["target_frame"] if pos is not None else self.p["frame_id"]
        self._targets[agent] = conv.target_msg(tid, stamp_ns, frame, pos)
        self._target_pose[agent] = pose
        self._target_obj[agent] = obj
        self.pubs[agent]["target"].publish(self._targets[agent])

    def _schedule(self) -> None:
        now = self.get_clock().now().nanoseconds
        t = self._t(now)
        changed = False
        for i in range(len(self.names)):
            tid, start = self.target(i, t)
            if self._targets[i] is None or self._targets[i].target_id != tid:
                self._since[i] = self.t0_ns + int(round(start * 1e9))
                self._announce(i, tid, self._since[i], self.tours[i].phase(t).obj if tid else None)
                changed = True
        if changed:
            self._publish_truth(now)

    def _refresh_target(self, agent: int, now_ns: int) -> None:
        """Base-frame targets move with the robot: a new TargetOfInterest for the same target, stamped ``now_ns``
        (the pose of this sensor tick), when its position moved more than ``target_refresh_distance``."""
        last = self._targets[agent]
        if not self.base_target or last is None or not last.has_position:
            return
        t = self._t(now_ns)
        if self.target(agent, t)[0] != last.target_id or now_ns <= conv.stamp_to_ns(last.header.stamp):
            return  # a target change is due: _schedule announces it
        obj = self._target_obj[agent]
        pos, _ = self.target_position(agent, t, obj)
        old = (last.position.x, last.position.y, last.position.z)
        if math.dist(pos, old) > float(self.p["target_refresh_distance"]):
            self._announce(agent, last.target_id, now_ns, obj)

    def _republish(self) -> None:
        for i, msg in enumerate(self._targets):
            if msg is not None:
                self.pubs[i]["target"].publish(msg)
        self._publish_truth(self.get_clock().now().nanoseconds)

    def _publish_truth(self, now_ns: int) -> None:
        truth = {
            "stamp_ns": now_ns, "frame_id": self.p["frame_id"], "class_names": self.class_names,
            "world": self.p["world"],
            "objects": {name: {"class_name": spec.class_name, "class_id": spec.class_id, "colour": spec.colour,
                               "shape": spec.shape, "material": spec.material, "position": [x, y, 0.0],
                               "height": spec.height, "width": spec.width}
                        for name, _, spec, (x, y), _ in self.objects},
            "target_frame": self.p["target_frame"],
            "agents": {ns: {"namespace": f"/{ns}", "target_id": self._targets[i].target_id if self._targets[i] else "",
                            "since_ns": self._since[i] if self._targets[i] else 0,
                            "pose": list(self.world.agent_pose(i)), "sensors": list(self.rigs[i]),
                            **self._target_truth(i)}
                       for i, ns in enumerate(self.names)},
        }
        self.pub_truth.publish(String(data=json.dumps(truth)))

    def _target_truth(self, agent: int) -> dict:
        """The agent's newest TargetOfInterest position (``target_frame``), its stamp and the robot pose (world
        frame) it was computed from; empty between targets."""
        msg = self._targets[agent]
        if msg is None or not msg.has_position:
            return {}
        return {"target_position": [msg.position.x, msg.position.y, msg.position.z],
                "target_stamp_ns": conv.stamp_to_ns(msg.header.stamp),
                "target_pose": list(self._target_pose[agent])}

    # -- sensors ------------------------------------------------------------------------------------------------
    def _tick(self, modality: str) -> None:
        self._schedule()  # a target change goes out before any sensor message stamped after it
        for i, ns in enumerate(self.names):
            if modality not in self.rigs[i]:
                continue
            now = self.get_clock().now().nanoseconds
            self._refresh_target(i, now)  # where the target is now, before what the sensors see now
            x, y, yaw = self._pose(i, self._t(now))
            self.world.set_agent_pose(i, x, y, yaw)
            noise = bool(self.p["noise"])
            if modality == "camera" and self.hard:
                rgb = self._hard_camera(i, self._t(now), noise)
                msg = conv.rgb_to_image(rgb, self.p["camera_encoding"], now, f"{ns}/camera")
            elif modality == "camera":
                rgb = self.world.render_camera(i, int(self.p["camera_width"]), int(self.p["camera_height"]),
                                               noise=noise)
                msg = conv.rgb_to_image(rgb, self.p["camera_encoding"], now, f"{ns}/camera")
            elif modality == "lidar":
                ranges = self.world.lidar_scan(i, noise=noise)
                if self.p["lidar_type"] == "PointCloud2":
                    pts = conv.scan_to_points(ranges, self._lidar["angle_min"], self._lidar["angle_increment"])
                    msg = conv.xyz_to_pointcloud2(pts[np.all(np.isfinite(pts), axis=1)], now, f"{ns}/laser")
                else:
                    msg = conv.ranges_to_scan(ranges, self._lidar, now, f"{ns}/laser",
                                              scan_time=1.0 / max(self.p["lidar_rate"], 1e-6))
            else:
                scan = self.world.reflectance_scan(i, noise=noise)
                msg = conv.ranges_to_scan(scan[:, 0], self._refl_cfg, now, f"{ns}/ir_ring", intensities=scan[:, 1],
                                          scan_time=1.0 / max(self.p["reflectance_rate"], 1e-6))
            if modality == "camera" and "camera_info" in self.pubs[i]:
                self.pubs[i]["camera_info"].publish(self._camera_info(msg))
            self.pubs[i][modality].publish(msg)
            self.counts[modality] += 1

    def _camera_info(self, image: Image) -> CameraInfo:
        """The CameraInfo of a published image: same header and size, the rendered projection's intrinsics
        (:func:`m2vae_fusion.sim.hard.camera_intrinsics`, as the hard data set records them for its training images;
        principal point at (w/2, h/2)), no distortion, P = [K | 0]."""
        k = [float(v) for v in self.camera_k]
        return CameraInfo(header=image.header, width=image.width, height=image.height, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=k, r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                          p=[k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0])

    def _hard_camera(self, agent: int, t: float, noise: bool) -> np.ndarray:
        """The hard world's camera: flat-lit albedo, then the visit's illuminant, gain noise and 8-bit output
        (:func:`m2vae_fusion.sim.hard.camera_response`)."""
        from m2vae_fusion.sim import hard as hard_world

        w, h = int(self.p["camera_width"]), int(self.p["camera_height"])
        self.world.set_lighting(direction=(0.0, 0.0, 1.0), colour=(1.0, 1.0, 1.0), ambient=1.0, diffuse=0.0,
                                specular=0.0)
        albedo = self.world.render_camera(agent, w, h, noise=False).astype(np.float32)
        v = self.tours[agent].phase(t).visit % self.kelvin.shape[1]
        if not noise:
            return np.clip(np.rint(albedo * hard_world.kelvin_rgb(self.kelvin[agent, v])), 0, 255).astype(np.uint8)
        return hard_world.camera_response(albedo, float(self.kelvin[agent, v]), float(self.intensity[agent, v]),
                                          0.0, self.world.rng)

    def close(self) -> None:
        self.world.close()


def main(args=None) -> NoReturn:
    """Entry point ``sim_world``: runs the node, then ends the process (:func:`m2vae_fusion.ros.spin.process_exit`)
    with exit status 0 after SIGINT/SIGTERM, 2 on a bad parameter."""
    process_exit(run_node(SimWorldNode, "sim_world", "close", args))


if __name__ == "__main__":
    main()
