"""``m2vae-fusion bench runtime``: the fusion node's cost on this machine, in one run on one set of observations.

Sections (each can be skipped with ``--skip``):

1. ``inference``: the networks one observation runs through in the node (β-VAE encoder of the modality + M2VAE
   decoders of the held slots + subset encoder + head; for a peer latent: decoders + subset encoder + head), timed
   bare in onnxruntime and in torch eager mode with one thread each (:mod:`m2vae_fusion.benchmarks.inference`), and
   the node's conversion + preprocessing of the same messages.
2. ``latency``: one fusion node process; the same observations are published one input kind at a time (camera
   320x240 and 640x480 rgb8, LaserScan, reflectance scan, peer LatentEmbedding) after every slot of the belief has
   been filled, and the node's own receive → publish percentiles are read from ``/diagnostics`` (window = the
   kind's samples); ``end_to_end`` adds DDS both ways (publish here → latent received here). Also the serialized
   sizes of a LatentEmbedding the node published and of the raw messages it summarises.
3. ``rate``: one node gets camera images only (after a warm-up with every sensor), at increasing rates per image
   size from a separate publisher process; a rate is sustained when processed ≈ sent (≥ 95 %), superseded + lost
   ≤ 5 %, nothing dropped and the end-to-end median does not grow within the step (last third ≤ 1.5 × first third
   + 5 ms); a rate the publisher process could not offer (< 95 %) is reported as publisher-limited, not as the
   node's limit.
4. ``scaling``: 1, 2, 3, 4, 8 agents, one fusion node process each, each fed camera + LiDAR + reflectance at the
   default rates by publisher processes (``--agents-per-feeder`` agents each); agents exchange latents on
   ``/m2vae/latents`` as deployed (each about its own target) unless ``--no-exchange``. Per node: CPU % (psutil,
   100 % = one core), RSS/USS, counters and latency percentiles; per agent count: p99, total CPU, no-backlog.
   No backlog = for every node and own sensor: processed ≥ 95 % of sent, superseded + lost ≤ 5 %, nothing dropped,
   median latency at the end ≤ 1.5 × at half time + 5 ms. Peer latents are reported (received, processed, redundant:
   no newer slot, so not merged).
5. ``fastdds``: a 640x480 (and 320x240) rgb8 ping-pong between two processes with and without
   ``config/fastdds_shm.xml`` (16 MiB shared-memory segment).

Targets (printed with PASS/MISS, misses are reported with numbers): node ÷ onnxruntime ≤ 1.5 at the median;
onnxruntime ÷ torch ≤ 0.3; LatentEmbedding ≥ 1000× smaller than a 640x480 rgb8 image; 3 agents with no backlog
under 50 % of the machine (< 100 % of one core summed over the nodes, on 2 cores); p99 at 8 agents ≤ 1.5 × p99 at
1 agent; every node's RSS ≤ 250 MB.

DDS: discovery on localhost and a domain of its own (set before ``rclpy.init()``, inherited by every child); the
nodes and this process use ``config/fastdds_shm.xml`` unless ``--no-fastdds-profile``. Every child process is
stopped in ``finally`` (also on Ctrl-C / SIGTERM). Node logs go to ``--log-dir`` (default: a temporary directory).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import time
from typing import NamedTuple

from m2vae_fusion.benchmarks.common import (PLAIN_PARAMS, OtherLoad, fmt, isolate_dds, load_average, machine_info,
                                            ratio, stats_ms, table, target, targets_table)
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.files import write_result

HELP = ("runtime: node latency vs bare onnxruntime and torch, message sizes, sustained camera rate, "
        "1-8 agents (CPU, RSS), Fast DDS SHM profile")

SECTIONS = ("headline", "inference", "latency", "rate", "scaling", "fastdds")
FULL = {"samples": 120, "repeats": 300, "latency_rate": 20.0, "rates": "15,30,60,120,240,480",
        "rate_sizes": "640x480,320x240", "rate_seconds": 3.0, "agents": "1,2,3,4,8", "scaling_seconds": 12.0,
        "pings": 100, "headline_seconds": 10.0, "eight_seconds": 10.0, "stops": 30}
QUICK = {"samples": 10, "repeats": 20, "latency_rate": 30.0, "rates": "30,120", "rate_sizes": "640x480",
         "rate_seconds": 1.0, "agents": "1,2", "scaling_seconds": 2.0, "pings": 6,
         "headline_seconds": 1.5, "eight_seconds": 1.5, "stops": 3}
KIND_RATE_SOURCE = {"camera_320x240": "camera", "camera_640x480": "camera", "lidar": "lidar",
                    "reflectance": "reflectance", "peer": "peer"}
#: the node's own sensor sources (the fourth, ``peer``, is the shared latents)
OWN = MODALITIES


def configure(parser) -> None:
    parser.add_argument("--model-dir", help="bundle directory (default: models/amiro when it exists, else an "
                                            "untrained export of the same architecture)")
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations and 1-2 agents (a smoke test; numbers are not meaningful)")
    parser.add_argument("--samples", type=int, help=f"observations per input kind for the node latency "
                                                    f"(default {FULL['samples']})")
    parser.add_argument("--repeats", type=int, help=f"timed runs per chain in onnxruntime / torch "
                                                    f"(default {FULL['repeats']})")
    parser.add_argument("--latency-rate", type=float, help="Hz at which the latency observations are sent "
                                                           f"(default {FULL['latency_rate']:g})")
    parser.add_argument("--rates", help=f"camera rates (Hz) of the sustained-rate test (default {FULL['rates']})")
    parser.add_argument("--rate-sizes", help=f"image sizes of the sustained-rate test (default {FULL['rate_sizes']})")
    parser.add_argument("--rate-seconds", type=float, help=f"seconds per rate (default {FULL['rate_seconds']:g})")
    parser.add_argument("--agents", help=f"agent counts of the scaling test (default {FULL['agents']})")
    parser.add_argument("--scaling-seconds", type=float,
                        help=f"measured seconds per agent count (default {FULL['scaling_seconds']:g})")
    parser.add_argument("--scaling-camera-size", default="320x240", help="camera image size in the scaling test")
    parser.add_argument("--camera-rate", type=float, default=30.0, help="scaling: camera Hz per agent (30)")
    parser.add_argument("--lidar-rate", type=float, default=10.0, help="scaling: LiDAR Hz per agent (10)")
    parser.add_argument("--reflectance-rate", type=float, default=10.0, help="scaling: reflectance Hz per agent (10)")
    parser.add_argument("--agents-per-feeder", type=int, default=4, help="agents fed by one publisher process (4)")
    parser.add_argument("--no-exchange", action="store_true",
                        help="scaling: agents do not exchange latents (default: they do, as deployed)")
    parser.add_argument("--pings", type=int, help=f"round trips per Fast DDS case (default {FULL['pings']})")
    parser.add_argument("--no-fastdds-profile", action="store_true",
                        help="run the nodes without config/fastdds_shm.xml (the round-trip test runs both anyway)")
    parser.add_argument("--headline-seconds", type=float, help="headline: measured seconds per run "
                                                                 f"(default {FULL['headline_seconds']:g})")
    parser.add_argument("--eight-seconds", type=float, help="headline: measured seconds of the 8-agent run "
                                                              f"(default {FULL['eight_seconds']:g})")
    parser.add_argument("--stops", type=int, help=f"headline: stops over node x signal (default {FULL['stops']})")
    parser.add_argument("--baseline-tree", metavar="DIR",
                        help="headline: also run the fusion node of this checkout (e.g. a git worktree of the commit "
                             "before a change; put first on PYTHONPATH of its node processes) in the same run")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="skip a section (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the nodes and torch threads (1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the observations (0)")
    parser.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: one of 201..230 from the pid)")
    parser.add_argument("--log-dir", help="node and publisher logs (default: a temporary directory)")


# -- helpers ----------------------------------------------------------------------------------------------------
def _size(text: str):
    from m2vae_fusion.errors import UserError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise UserError(f"image size must be WxH, got {text!r}") from None


def _numbers(text: str, kind=float, name: str = "list"):
    from m2vae_fusion.errors import UserError

    try:
        vals = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"--{name}: expected positive numbers, got {text!r}")
    return vals


def _mono(t_wall: float) -> float:
    return time.monotonic() + (t_wall - time.time())


def _sleep_until_wall(t_wall: float) -> None:
    while True:
        left = t_wall - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception of the main thread, so that every ``finally`` stops the children."""


def _on_sigterm(signum, frame):
    raise _Terminated()


class Bench:
    """Holds the probe, the child processes and the paths of one run."""

    def __init__(self, args, tmp: str, logs: str, model_dir: str, manifest: dict, obs_path: str):
        from m2vae_fusion.ros.harness import Probe

        self.args, self.tmp, self.logs = args, tmp, logs
        self.model_dir, self.manifest, self.obs_path = model_dir, manifest, obs_path
        self.probe = Probe("bench_runtime")
        self.procs: list = []
        self.rate_node = None
        self.node_env = None  # extra environment of the fusion node processes (the headline's baseline tree)
        self.off = time.time() - time.monotonic()

    # -- processes
    def node(self, ns: str, env: dict | None = None, **params):
        from m2vae_fusion.ros.harness import NodeProcess

        p = {"model_dir": self.model_dir, "agent_id": ns, "ort_threads": self.args.threads,
             "diagnostics_period": 0.25, **params}
        env = env if env is not None else self.node_env
        # a node of another checkout (PYTHONPATH) starts in that checkout: `python -m` puts the working directory
        # first on sys.path, and from this repository's root the child would run this checkout's node instead
        proc = NodeProcess("m2vae_fusion.ros.fusion_node", f"/{ns}", p, self.logs, env=env,
                           name=f"{ns}_{len(self.procs)}", cwd=(env or {}).get("PYTHONPATH"))
        self.procs.append(proc)
        return proc

    def wait_nodes(self, nodes: dict, timeout: float = 120.0) -> None:
        from m2vae_fusion.errors import UserError

        deadline = time.monotonic() + timeout
        for ns, proc in nodes.items():
            while self.probe.diagnostics(f"/{ns}/fusion_node", timeout=0.5) is None:
                if not proc.alive() or time.monotonic() > deadline:
                    raise UserError(f"fusion node /{ns} did not start (log {proc.log_path}):\n{proc.log()[-1500:]}")

    def child(self, name: str, spec: dict, env: dict | None = None):
        from m2vae_fusion.benchmarks.children import ENV
        from m2vae_fusion.ros.harness import NodeProcess

        path = os.path.join(self.tmp, f"{name}.json")
        for key in ("ready_file", "result_file", "go_file"):
            spec.setdefault(key, os.path.join(self.tmp, f"{name}.{key.split('_')[0]}"))
        with open(path, "w") as f:
            json.dump(spec, f)
        proc = NodeProcess("m2vae_fusion.benchmarks.children", "", None, self.logs, name=name,
                           env={ENV: path, **(env or {})})
        proc.spec = spec
        self.procs.append(proc)
        return proc

    def wait_file(self, proc, key: str, timeout: float) -> dict:
        from m2vae_fusion.errors import UserError

        path = proc.spec[key]
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if not proc.alive() and not os.path.exists(path):
                raise UserError(f"{proc.name} exited ({proc.proc.returncode}) before writing {os.path.basename(path)}"
                                f":\n{proc.log()[-1500:]}")
            if time.monotonic() > deadline:
                raise UserError(f"{proc.name}: no {os.path.basename(path)} after {timeout:.0f} s:\n"
                                f"{proc.log()[-1500:]}")
            time.sleep(0.05)
        with open(path) as f:
            return json.load(f)

    def stop(self, procs) -> None:
        for p in procs:
            p.stop(timeout=5.0)
            if p in self.procs:
                self.procs.remove(p)

    def feeders(self, name: str, groups: list, segments_for, targets: dict, gap: float) -> list:
        procs = []
        for i, agents in enumerate(groups):
            spec = {"role": "feeder", "name": f"{name}{i}", "obs": self.obs_path,
                    "manifest": os.path.join(self.model_dir, "manifest.json"), "agents": agents,
                    "targets": {ns: targets[ns] for ns in agents}, "segments": segments_for(agents), "gap": gap,
                    "match_timeout": 60}
            procs.append(self.child(f"{name}{i}", spec))
        return procs

    def go(self, feeders, delay: float = 0.5) -> float:
        for p in feeders:
            self.wait_file(p, "ready_file", 90)
        t0 = time.time() + delay
        for p in feeders:
            with open(p.spec["go_file"] + ".tmp", "w") as f:
                json.dump({"t0": t0}, f)
            os.replace(p.spec["go_file"] + ".tmp", p.spec["go_file"])
        return t0

    def diag(self, ns: str, after_wall: float, timeout: float = 20.0) -> dict:
        """The node's first /diagnostics values published after ``after_wall`` (wall s), waiting at most ``timeout``
        s ({}: the counts of this phase read 0). 20 s by default: a node busy under load may publish late (5 s once
        gave a phase of 0 fused in a fresh-clone test run)."""
        return self.probe.diagnostics(f"/{ns}/fusion_node", after=_mono(after_wall), timeout=timeout) or {}

    def close(self) -> None:
        for p in list(self.procs):
            try:
                p.stop(timeout=5.0)
            except Exception:  # keep stopping the others
                pass
        self.procs.clear()
        self.probe.close()


def _delta(a: dict, b: dict, key: str):
    return (b.get(key, 0) or 0) - (a.get(key, 0) or 0)


class LatentStamps(NamedTuple):
    """What the probe keeps of a LatentEmbedding it times (:meth:`Probe.subscribe` ``keep``): the header stamp and the
    slots' modalities, stamps (int ns) and sources."""
    stamp_ns: int
    modalities: tuple
    modality_stamps_ns: tuple
    modality_sources: tuple


def latent_stamps(msg) -> LatentStamps:
    """:class:`LatentStamps` of a LatentEmbedding (recorded instead of the message: see :meth:`Probe.subscribe`)."""
    from m2vae_fusion.core import messages as conv

    return LatentStamps(conv.stamp_to_ns(msg.header.stamp), tuple(msg.modalities),
                        tuple(conv.stamp_to_ns(x) for x in msg.modality_stamps), tuple(msg.modality_sources))


def check_baseline_tree(tree: str) -> str:
    """The fusion node module file that ``--baseline-tree`` ``tree`` runs, checked the way :meth:`Bench.node` starts
    it (``PYTHONPATH`` = the tree, working directory = the tree).

    Raises:
        UserError: no ``m2vae_fusion/ros/fusion_node.py`` in ``tree``, or the module resolves elsewhere (then the
            "baseline" would be this checkout's node, and every comparison with it void).
    """
    import subprocess

    from m2vae_fusion.errors import UserError

    tree = os.path.abspath(tree)
    want = os.path.join(tree, "m2vae_fusion", "ros", "fusion_node.py")
    if not os.path.isfile(want):
        raise UserError(f"--baseline-tree {tree}: no m2vae_fusion/ros/fusion_node.py there")
    probe = ("import importlib.util; "
             "print(importlib.util.find_spec('m2vae_fusion.ros.fusion_node').origin)")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tree, timeout=60,
                         env={**os.environ, "PYTHONPATH": tree}).stdout.strip()
    if os.path.realpath(got) != os.path.realpath(want):
        raise UserError(f"--baseline-tree {tree}: its fusion node resolves to {got or 'nothing'}, not {want}")
    return got


def _e2e(probe, topic: str, off: float, t_from: float, t_to: float) -> list:
    """(stamp s, end-to-end s) of the latents on ``topic`` whose evidence is stamped in [t_from, t_to) (wall s); the
    probe recorded either the messages or their :class:`LatentStamps`."""
    from m2vae_fusion.core import messages as conv

    with probe.cv:
        items = list(probe.received[topic])
    out = []
    for t_recv, msg in items:
        s = (msg.stamp_ns if isinstance(msg, LatentStamps) else conv.stamp_to_ns(msg.header.stamp)) * 1e-9
        if t_from <= s < t_to:
            out.append((s, t_recv + off - s))
    return sorted(out)


# -- section 2: per-observation latency and sizes -----------------------------------------------------------------
def section_latency(b: Bench, obs: dict, inference: dict | None) -> tuple:
    from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding
    from sensor_msgs.msg import Image, LaserScan

    from m2vae_fusion.benchmarks.inference import KINDS, messages
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS

    args, probe = b.args, b.probe
    n, rate = args.samples, args.latency_rate
    ns = "bench_lat"
    node = b.node(ns, latency_window=n, max_message_age=5.0)
    b.wait_nodes({ns: node})
    if b.rate_node is not None:  # started at the same time; idle, but up before anything is measured
        b.wait_nodes({"bench_rate": b.rate_node})
    probe.subscribe(f"/{ns}/latent", LatentEmbedding)
    probe.subscribe(f"/{ns}/belief", ClassBelief)
    topics = {"camera_320x240": (f"/{ns}/camera/image_raw", Image, SENSOR_QOS),
              "camera_640x480": (f"/{ns}/camera/image_raw", Image, SENSOR_QOS),
              "lidar": (f"/{ns}/scan", LaserScan, SENSOR_QOS),
              "reflectance": (f"/{ns}/reflectance", LaserScan, SENSOR_QOS),
              "peer": ("/m2vae/latents", LatentEmbedding, RELIABLE_QOS)}
    toi = conv.target_msg("bench_target", probe.now_ns() - 1_000_000, "map")
    if not probe.wait_subscribers(f"/{ns}/target_of_interest", type(toi), RELIABLE_QOS, timeout=30):
        raise UserError(f"/{ns}: no subscriber on target_of_interest")
    probe.publish(f"/{ns}/target_of_interest", toi, RELIABLE_QOS)
    for topic, mtype, qos in topics.values():
        if not probe.wait_subscribers(topic, mtype, qos, timeout=30):
            raise UserError(f"no subscriber on {topic}")
    msgs = {k: messages(obs, k, b.manifest) for k in KINDS}
    time.sleep(0.3)

    def warm(kind: str) -> None:
        """Send the kind's first message stamped now (a peer latent with newer evidence: a real merge)."""
        topic, _, qos = topics[kind]
        msg = msgs[kind][0]
        msg.header.stamp = conv.ns_to_stamp(probe.now_ns())
        if kind == "peer":
            msg.modality_stamps = [msg.header.stamp]
        probe.publish(topic, msg, qos)
        time.sleep(0.08)

    # warm-up: every kind a few times, so every slot is held (steady state) and first-run costs are paid
    for _ in range(3):
        for kind in KINDS:
            warm(kind)
    time.sleep(0.5)
    # until the node has fused each kind at least once (at most 15 s): in a fresh-clone test run the first images on
    # the best-effort camera topic (warm-up and all 10 timed ones) never reached a node that had matched the writer
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        counts = b.diag(ns, time.time(), timeout=5.0)
        missing = [k for k in KINDS if not counts.get(f"latency_samples.{KIND_RATE_SOURCE[k]}")]
        if not missing:
            break
        for kind in missing:
            warm(kind)
    out = {}
    for kind in KINDS:
        source = KIND_RATE_SOURCE[kind]
        topic, _, qos = topics[kind]
        before = b.diag(ns, time.time())
        t_next = time.monotonic()
        t_from = time.time()
        for i in range(n):
            msg = msgs[kind][i % len(msgs[kind])]
            stamp = probe.now_ns()
            msg.header.stamp = conv.ns_to_stamp(stamp)
            if kind == "peer":  # the peer's evidence is newer than the held slot: a real merge
                msg.modality_stamps = [conv.ns_to_stamp(stamp)]
            probe.publish(topic, msg, qos)
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.monotonic()))
        time.sleep(0.6)
        after = b.diag(ns, time.time())
        e2e = [d for _, d in _e2e(probe, f"/{ns}/latent", b.off, t_from, time.time())]
        fused = _delta(before, after, f"latency_samples.{source}")
        node_ms = {q: after.get(f"latency_ms.{source}.{q}") for q in ("p50", "p90", "p99", "max")}
        r = {"sent": n, "fused": fused, "rate_hz": rate, "node_ms": node_ms,
             "window": after.get(f"latency_ms.{source}.window"), "window_pure": fused >= n,
             "end_to_end_ms": stats_ms(e2e),
             "superseded": _delta(before, after, f"superseded.{source}"),
             "dropped": _delta(before, after, "dropped.total")}
        if inference and kind in inference["paths"]:
            p = inference["paths"][kind]
            r["onnxruntime_ms"] = {q: p["onnxruntime_ms"][q] for q in ("p50", "p99")}
            r["torch_ms"] = {q: p["torch_ms"][q] for q in ("p50", "p99")}
            r["node_to_onnxruntime"] = {q: ratio(node_ms[q], p["onnxruntime_ms"][q]) for q in ("p50", "p99")}
            r["onnxruntime_to_torch"] = {q: ratio(p["onnxruntime_ms"][q], p["torch_ms"][q]) for q in ("p50", "p99")}
        out[kind] = r
    latents = probe.messages(f"/{ns}/latent")
    beliefs = probe.messages(f"/{ns}/belief")
    b.stop([node])
    return out, (latents[-1] if latents else None), (beliefs[-1] if beliefs else None)


def sizes(b_manifest: dict, obs: dict, latent=None, belief=None) -> dict:
    """Serialized bytes (CDR, rclpy.serialization) of a LatentEmbedding / ClassBelief and of the raw messages."""
    import numpy as np
    from rclpy.serialization import serialize_message

    from m2vae_fusion.benchmarks.inference import messages
    from m2vae_fusion.core import messages as conv

    origin = "published by the fusion node (3 slots)"
    if latent is None:  # representative: every slot held, two contributors
        origin = "built here like the node's (3 slots)"
        mods = tuple(b_manifest["modalities"])
        dz = int(b_manifest["latent_dim"])
        data = conv.LatentData(agent_id="agent1", target_id="target_agent1", model_id=b_manifest["model_id"],
                               stamp_ns=time.time_ns(), modalities=mods,
                               modality_stamps_ns=tuple(time.time_ns() for _ in mods),
                               modality_sources=tuple("agent1" for _ in mods), contributors=("agent1",),
                               mean=np.zeros(dz, np.float32), log_variance=np.zeros(dz, np.float32), frame_id="map")
        latent = conv.latent_to_msg(data)
    raw = {"image_320x240_rgb8": messages(obs, "camera_320x240", b_manifest)[0],
           "image_640x480_rgb8": messages(obs, "camera_640x480", b_manifest)[0],
           "laser_scan": messages(obs, "lidar", b_manifest)[0],
           "reflectance_scan": messages(obs, "reflectance", b_manifest)[0]}
    out = {"latent_embedding": len(serialize_message(latent)), "latent_origin": origin,
           "latent_modalities": list(latent.modalities), "latent_dim": len(latent.mean)}
    if belief is not None:
        out["class_belief"] = len(serialize_message(belief))
    out.update({k: len(serialize_message(v)) for k, v in raw.items()})
    out["raw_over_latent"] = {k: out[k] / out["latent_embedding"] for k in raw}
    out["camera_lidar_reflectance_over_latent"] = (
        (out["image_640x480_rgb8"] + out["laser_scan"] + out["reflectance_scan"]) / out["latent_embedding"])
    return out


# -- section 3: highest sustained camera rate -------------------------------------------------------------------
def rate_node_params(args) -> dict:
    """Parameters of the sustained-rate node: no latent exchange; the latency window fits in the slowest step."""
    window = max(5, int(min(_numbers(args.rates, float, "rates")) * float(args.rate_seconds) * 0.8))
    return {"shared_latent_topic": "", "latency_window": window, "max_message_age": 5.0}


def section_rate(b: Bench) -> dict:
    import numpy as np
    from m2vae_fusion_msgs.msg import LatentEmbedding

    from m2vae_fusion.benchmarks.common import ProcessMeter

    args = b.args
    rates = _numbers(args.rates, float, "rates")
    sizes_ = [_size(s) for s in args.rate_sizes.split(",")]
    step = float(args.rate_seconds)
    window = rate_node_params(args)["latency_window"]
    ns = "bench_rate"
    node = b.rate_node or b.node(ns, **rate_node_params(args))
    b.rate_node = None
    b.wait_nodes({ns: node})
    b.probe.subscribe(f"/{ns}/latent", LatentEmbedding, keep=latent_stamps)
    warm = {"name": "warmup", "duration": 1.0, "streams": [
        {"ns": ns, "kind": "camera_320x240", "rate": 5.0}, {"ns": ns, "kind": "camera_640x480", "rate": 5.0},
        {"ns": ns, "kind": "lidar", "rate": 5.0}, {"ns": ns, "kind": "reflectance", "rate": 5.0}]}
    steps = [(f"{w}x{h}", r) for (w, h) in sizes_ for r in sorted(rates)]
    segs = [warm] + [{"name": f"{s}@{r:g}", "duration": step,
                      "streams": [{"ns": ns, "kind": f"camera_{s}", "rate": r}]} for s, r in steps]
    gap = 1.0
    feeder = b.feeders("rate_feeder", [[ns]], lambda agents: segs, {ns: "bench_target"}, gap)[0]
    meter = ProcessMeter({"node": node.pid, "feeder": feeder.pid})
    t0 = b.go([feeder])
    starts, t = [], t0
    for seg in segs:
        starts.append(t)
        t += seg["duration"] + gap
    _sleep_until_wall(starts[1] - gap + 0.7)
    prev = b.diag(ns, starts[1] - gap + 0.35)
    results = {f"{w}x{h}": {"steps": []} for (w, h) in sizes_}
    for i, (s, r) in enumerate(steps, start=1):
        seg_start, seg_end = starts[i], starts[i] + segs[i]["duration"]
        _sleep_until_wall(seg_start)
        meter.start()
        _sleep_until_wall(seg_end)
        cpu = meter.stop()
        _sleep_until_wall(seg_end + 0.7)
        cur = b.diag(ns, seg_end + 0.35)
        e2e = _e2e(b.probe, f"/{ns}/latent", b.off, seg_start, seg_end)
        third = max(1, len(e2e) // 3)
        first = float(np.median([d for _, d in e2e[:third]]) * 1e3) if e2e else None
        last = float(np.median([d for _, d in e2e[-third:]]) * 1e3) if e2e else None
        results[s]["steps"].append({
            "rate_hz": r, "seconds": segs[i]["duration"], "received": _delta(prev, cur, "received.camera"),
            "processed": _delta(prev, cur, "processed.camera"), "superseded": _delta(prev, cur, "superseded.camera"),
            "dropped": _delta(prev, cur, "dropped.total"),
            "node_ms": {q: cur.get(f"latency_ms.camera.{q}") for q in ("p50", "p99")},
            "end_to_end_ms": {"first_third_p50": first, "last_third_p50": last, "n": len(e2e)},
            "node_cpu_percent": cpu["per_process"]["node"], "feeder_cpu_percent": cpu["per_process"]["feeder"]})
        prev = cur
    res = b.wait_file(feeder, "result_file", 30)
    b.stop([node, feeder])
    for i, (s, r) in enumerate(steps, start=1):
        st = next(x for x in results[s]["steps"] if x["rate_hz"] == r)
        fs = res["segments"][i]["streams"][0]
        st["sent"] = fs["sent"]
        st["offered_hz"] = fs["rate_hz"]
        st["feeder_lateness_ms"] = res["segments"][i]["lateness_ms"]
        st["processed_hz"] = st["processed"] / st["seconds"]
        st["lost"] = max(0, st["sent"] - st["received"])
        e = st["end_to_end_ms"]
        growing = (e["first_third_p50"] is not None and e["last_third_p50"] is not None
                   and e["last_third_p50"] > 1.5 * e["first_third_p50"] + 5.0)
        why = []
        if st["processed"] < 0.95 * st["sent"]:
            why.append(f"processed {st['processed']}/{st['sent']}")
        if st["superseded"] + st["lost"] > 0.05 * max(1, st["sent"]):
            why.append(f"superseded {st['superseded']} + lost {st['lost']}")
        if st["dropped"]:
            why.append(f"dropped {st['dropped']}")
        if growing:
            why.append("end-to-end latency grows")
        limited = st["offered_hz"] < 0.95 * r
        # False: the node fell behind; None: it kept up with what the publisher managed, below the asked rate
        st["sustained"] = False if why else (None if limited else True)
        if limited:
            why.append(f"publisher reached only {st['offered_hz']:.0f} Hz")
        st["why_not"] = "; ".join(why)
    for s, r in results.items():
        best = None
        for st in r["steps"]:  # ascending rates: the highest rate up to which every rate is sustained
            if st["sustained"] is not True:
                break
            best = st["rate_hz"]
        r["max_sustained_hz"] = best
        first = next((st for st in r["steps"] if st["sustained"] is not True), None)
        r["first_failure"] = f"{first['rate_hz']:g} Hz: {first['why_not']}" if first else None
        r["publisher_limited"] = bool(first is not None and first["sustained"] is None)
    return {"latency_window": window, "gap_s": gap, "sizes": results}


# -- section 4: scaling ---------------------------------------------------------------------------------------------
def section_scaling(b: Bench) -> dict:
    import numpy as np

    from m2vae_fusion.benchmarks.common import ProcessMeter

    args = b.args
    counts = _numbers(args.agents, int, "agents")
    w, h = _size(args.scaling_camera_size)
    cam_kind = f"camera_{w}x{h}"
    from m2vae_fusion.benchmarks.inference import KINDS

    if cam_kind not in KINDS:
        from m2vae_fusion.errors import UserError

        raise UserError(f"--scaling-camera-size must be one of 320x240, 640x480 (got {args.scaling_camera_size})")
    rates = {"camera": args.camera_rate, "lidar": args.lidar_rate, "reflectance": args.reflectance_rate}
    kind_of = {"camera": cam_kind, "lidar": "lidar", "reflectance": "reflectance"}
    T = float(args.scaling_seconds)
    window = max(5, int(min(rates.values()) * T))
    per_feeder = max(1, int(args.agents_per_feeder))
    warm_s, gap = (1.0, 1.0) if args.quick else (1.5, 1.5)
    phases = []
    for n in counts:
        agents = [f"agent{i + 1}" for i in range(n)]
        targets = {a: f"target_{a}" for a in agents}
        extra = {} if not args.no_exchange else {"shared_latent_topic": ""}
        nodes = {a: b.node(a, latency_window=window, diagnostics_period=0.5, **extra) for a in agents}
        feeders = []
        try:
            b.wait_nodes(nodes)
            groups = [agents[i:i + per_feeder] for i in range(0, n, per_feeder)]

            def segments_for(group):
                streams = [{"ns": a, "kind": kind_of[m], "rate": rates[m]} for a in group for m in OWN]
                return [{"name": "warmup", "duration": warm_s, "streams": streams},
                        {"name": "measure", "duration": T, "streams": streams}]

            feeders = b.feeders(f"scale{n}_feeder", groups, segments_for, targets, gap)
            meter = ProcessMeter({**{a: p.pid for a, p in nodes.items()},
                                  **{f"feeder{i}": p.pid for i, p in enumerate(feeders)}})
            t0 = b.go(feeders, delay=0.8)
            t_start = t0 + warm_s + gap
            t_end = t_start + T
            _sleep_until_wall(t_start - 0.3)
            before = {a: b.diag(a, t0 + warm_s + 0.6) for a in agents}
            _sleep_until_wall(t_start)
            meter.start()
            _sleep_until_wall(t_start + T / 2)
            mid = {a: b.diag(a, t_start + T / 2 - 0.05, timeout=2.0) for a in agents}
            _sleep_until_wall(t_end)
            cpu = meter.stop()
            mem = {a: meter.memory(a) for a in agents}
            _sleep_until_wall(t_end + 1.0)
            after = {a: b.diag(a, t_end + 0.5) for a in agents}
            sent = {}
            for p in feeders:
                res = b.wait_file(p, "result_file", 30)
                for st in res["segments"][1]["streams"]:
                    sent[(st["ns"], KINDS[st["kind"]][0])] = st
        finally:
            b.stop(list(nodes.values()) + feeders)
        node_rows = []
        for a in agents:
            d0, d1, dm = before[a], after[a], mid[a]
            srcs, why = {}, []
            for m in OWN:
                st = sent.get((a, m), {"sent": 0, "rate_hz": 0.0})
                row = {"sent": st["sent"], "offered_hz": st["rate_hz"],
                       "received": _delta(d0, d1, f"received.{m}"), "processed": _delta(d0, d1, f"processed.{m}"),
                       "superseded": _delta(d0, d1, f"superseded.{m}"),
                       "node_ms": {q: d1.get(f"latency_ms.{m}.{q}") for q in ("p50", "p99", "max")},
                       "node_p50_mid_ms": dm.get(f"latency_ms.{m}.p50")}
                row["lost"] = max(0, row["sent"] - row["received"])
                if row["processed"] < 0.95 * row["sent"]:
                    why.append(f"{m} processed {row['processed']}/{row['sent']}")
                if row["superseded"] + row["lost"] > 0.05 * max(1, row["sent"]):
                    why.append(f"{m} superseded {row['superseded']} + lost {row['lost']}")
                p_mid, p_end = row["node_p50_mid_ms"], row["node_ms"]["p50"]
                if p_mid is not None and p_end is not None and p_end > 1.5 * p_mid + 5.0:
                    why.append(f"{m} latency grows ({p_mid:.1f} → {p_end:.1f} ms)")
                srcs[m] = row
            peer = None
            if not args.no_exchange and n > 1:
                peer = {"received": _delta(d0, d1, "received.peer"), "processed": _delta(d0, d1, "processed.peer"),
                        "superseded": _delta(d0, d1, "superseded.peer"),
                        "redundant": _delta(d0, d1, "redundant.peer"),
                        "node_ms": {q: d1.get(f"latency_ms.peer.{q}") for q in ("p50", "p99", "max")}}
            dropped = _delta(d0, d1, "dropped.total")
            if dropped:
                why.append(f"dropped {dropped}")
            node_rows.append({"agent": a, "cpu_percent": cpu["per_process"][a], **mem[a], "sources": srcs,
                              "peer": peer, "dropped": dropped, "no_backlog": not why, "why": "; ".join(why)})
        p99s = [r["sources"][m]["node_ms"]["p99"] for r in node_rows for m in OWN
                if r["sources"][m]["node_ms"]["p99"] is not None]
        p50s = [r["sources"][m]["node_ms"]["p50"] for r in node_rows for m in OWN
                if r["sources"][m]["node_ms"]["p50"] is not None]
        cam99 = [r["sources"]["camera"]["node_ms"]["p99"] for r in node_rows
                 if r["sources"]["camera"]["node_ms"]["p99"] is not None]
        peer99 = [r["peer"]["node_ms"]["p99"] for r in node_rows if r["peer"] and r["peer"]["node_ms"]["p99"]]
        offered = {m: float(np.mean([sent[(a, m)]["rate_hz"] for a in agents if (a, m) in sent]) if sent else 0.0)
                   for m in OWN}
        phases.append({
            "agents": n, "feeders": len(feeders), "seconds": T, "offered_hz": offered,
            "p99_ms": max(p99s) if p99s else None, "p50_ms": float(np.median(p50s)) if p50s else None,
            "camera_p99_ms": max(cam99) if cam99 else None, "peer_p99_ms": max(peer99) if peer99 else None,
            "cpu_percent_nodes": float(sum(r["cpu_percent"] for r in node_rows)),
            "cpu_percent_per_node": float(np.mean([r["cpu_percent"] for r in node_rows])),
            "cpu_percent_feeders": float(sum(v for k, v in cpu["per_process"].items() if k.startswith("feeder"))),
            "cpu_percent_machine": cpu["machine_percent"],
            "rss_mb_max": max(r["rss_mb"] for r in node_rows), "uss_mb_max": max(r["uss_mb"] for r in node_rows),
            "no_backlog": all(r["no_backlog"] for r in node_rows), "nodes": node_rows,
            "load_average_after": load_average()})
    return {"camera_size": [w, h], "rates_hz": rates, "exchange": not args.no_exchange,
            "agents_per_feeder": per_feeder, "latency_window": window, "warmup_s": warm_s, "phases": phases,
            "p99_definition": "max over nodes and own sensors of the node's receive → publish p99 over the last "
                              f"{window} samples per sensor (the measured period)"}


# -- section 0: headline figures (issue 12) -----------------------------------------------------------------------
HEADLINE_AGENTS = ("hl1", "hl2", "hl3")  # the measured agent and its 2 peers
STOP_SIGNALS = ("SIGINT", "SIGTERM", "killpg_SIGINT")
STOP_NODES = {"fusion_node": "m2vae_fusion.ros.fusion_node", "sim_world": "m2vae_fusion.ros.sim_world_node"}


def _busy_loops(n: int) -> list:
    """``n`` CPU-bound background processes (pure Python busy loops) in their own sessions."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                             stdin=subprocess.DEVNULL) for _ in range(n)]


def _end(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def _camera_e2e(probe, agents, off: float, t_from: float, t_to: float) -> list:
    """End-to-end seconds (feeder publish → latent received here) of camera observations stamped in [t_from, t_to):
    the first latent per (agent, stamp) whose newest slot is the agent's own camera observation (the probe recorded
    :class:`LatentStamps`)."""
    out = []
    for a in agents:
        with probe.cv:
            items = list(probe.received[f"/{a}/latent"])
        seen = set()
        for t_recv, rec in items:
            ns = rec.stamp_ns
            s = ns * 1e-9
            if ns in seen or not (t_from <= s < t_to):
                continue
            seen.add(ns)
            if "camera" not in rec.modalities:
                continue
            i = rec.modalities.index("camera")
            src = rec.modality_sources[i] if len(rec.modality_sources) > i else a
            if rec.modality_stamps_ns[i] == ns and src == a:
                out.append(t_recv + off - s)
    return out


def _scenario(b: "Bench", kind: str, tag: str, seconds: float, env: dict | None = None, **params) -> dict:
    """One run of the headline scenario: 3 agents (``echo`` processes or fusion ``node`` s exchanging latents), each
    fed 30 Hz 320x240 camera + 10 Hz LiDAR + 10 Hz reflectance by one feeder. Returns camera end-to-end seconds
    (all agents), CPU % per agent process and what the feeder sent."""
    from m2vae_fusion.benchmarks.common import ProcessMeter
    from m2vae_fusion_msgs.msg import LatentEmbedding

    args = b.args
    agents = list(HEADLINE_AGENTS)
    rates = {"camera": args.camera_rate, "lidar": args.lidar_rate, "reflectance": args.reflectance_rate}
    kinds = {"camera": "camera_320x240", "lidar": "lidar", "reflectance": "reflectance"}
    for a in agents:
        b.probe.subscribe(f"/{a}/latent", LatentEmbedding, keep=latent_stamps)
        b.probe.clear(f"/{a}/latent")
    if kind == "echo":
        procs = {a: b.child(f"{tag}_echo_{a}", {"role": "echo", "name": f"echo_{a}", "agents": [a]}) for a in agents}
        for p in procs.values():
            b.wait_file(p, "ready_file", 90)
    else:
        procs = {a: b.node(a, env=env, diagnostics_period=0.5, **params) for a in agents}
        b.wait_nodes(procs)
    warm, gap = (1.0, 1.0) if args.quick else (2.0, 1.0)
    streams = [{"ns": a, "kind": kinds[m], "rate": rates[m]} for a in agents for m in OWN]
    feeders = []
    try:
        feeders = b.feeders(f"{tag}_feeder", [agents], lambda g: [
            {"name": "warmup", "duration": warm, "streams": streams},
            {"name": "measure", "duration": seconds, "streams": streams}], {a: f"target_{a}" for a in agents}, gap)
        meter = ProcessMeter({a: p.pid for a, p in procs.items()})
        t0 = b.go(feeders, delay=0.8)
        t_start = t0 + warm + gap
        t_end = t_start + seconds
        _sleep_until_wall(t_start)
        meter.start()
        _sleep_until_wall(t_end)
        cpu = meter.stop()
        _sleep_until_wall(t_end + 1.0)
        res = b.wait_file(feeders[0], "result_file", 30)
    finally:
        b.stop(list(procs.values()) + feeders)
    cam_sent = sum(st["sent"] for st in res["segments"][1]["streams"] if st["kind"].startswith("camera"))
    e2e = _camera_e2e(b.probe, agents, b.off, t_start, t_end)
    for a in agents:
        b.probe.clear(f"/{a}/latent")
    per = [cpu["per_process"][a] for a in agents]
    return {"kind": kind, "seconds": seconds, "camera_sent": cam_sent, "camera_answered": len(e2e),
            "e2e_ms": stats_ms(e2e), "cpu_percent_per_agent": float(sorted(per)[len(per) // 2]),
            "cpu_percent_agents": per}


def _reference_chain(b: "Bench", repeats: int) -> dict:
    """Today's camera chain through the bundle's per-network onnxruntime sessions (β-VAE encoder + M2VAE decoders
    of the held slots + subset encoder + head), called directly: the fixed reference of the headline figures."""
    import numpy as np

    from m2vae_fusion.benchmarks.inference import OrtChains, convert_preprocess, messages

    obs = dict(np.load(b.obs_path))
    chains = OrtChains(b.model_dir, b.manifest, b.args.threads)
    xs = [convert_preprocess("camera_320x240", m, b.manifest, obs.get("target_position"))
          for m in messages(obs, "camera_320x240", b.manifest)]
    z = np.random.default_rng(1).normal(size=(1, int(b.manifest["latent_dim"]))).astype(np.float32)
    times = []
    for i in range(10 + repeats):
        t = time.perf_counter()
        chains.run("camera_320x240", xs[i % len(xs)], z)
        if i >= 10:
            times.append(time.perf_counter() - t)
    return stats_ms(times)


def _eight(b: "Bench", seconds: float, env: dict | None) -> dict:
    """8 agents exchanging latents (the scaling section's run with 8 agents): camera frames processed %, camera p99
    of the node (median over nodes), total CPU of the nodes."""
    import numpy as np

    saved = (b.args.agents, b.args.scaling_seconds, b.node_env)
    b.args.agents, b.args.scaling_seconds, b.node_env = "8", seconds, env
    try:
        phase = section_scaling(b)["phases"][0]
    finally:
        b.args.agents, b.args.scaling_seconds, b.node_env = saved
    rows = [r["sources"]["camera"] for r in phase["nodes"]]
    sent = sum(r["sent"] for r in rows)
    p99 = [r["node_ms"]["p99"] for r in rows if r["node_ms"]["p99"] is not None]
    return {"agents": phase["agents"], "camera_sent": sent, "camera_processed": sum(r["processed"] for r in rows),
            "camera_processed_percent": 100.0 * sum(min(r["processed"], r["sent"]) for r in rows) / max(1, sent),
            "camera_p99_ms_median_over_nodes": float(np.median(p99)) if p99 else None,
            "cpu_percent_total": phase["cpu_percent_nodes"], "cpu_percent_machine": phase["cpu_percent_machine"]}


def _stops(b: "Bench", n: int) -> dict:
    """``n`` stops spread over node × signal (SIGINT, SIGTERM, SIGINT to the whole process group), 6 at a time:
    exit status and whether the log holds a traceback."""
    from m2vae_fusion.ros.harness import NodeProcess

    combos = [(node, sig) for node in STOP_NODES for sig in STOP_SIGNALS]
    plan = [combos[i % len(combos)] for i in range(n)]
    runs = []
    for start in range(0, len(plan), 6):
        batch = []
        for i, (node, sig) in enumerate(plan[start:start + 6]):
            params = {"model_dir": b.model_dir} if node == "fusion_node" else {}
            proc = NodeProcess(STOP_NODES[node], f"/stop{start + i}", params, b.logs, name=f"stop{start + i}")
            batch.append((node, sig, proc))
        try:
            deadline = time.monotonic() + 90
            for node, sig, proc in batch:  # up: the node logged its start-up
                while (time.monotonic() < deadline and proc.alive()
                       and ("fusing" not in proc.log() if node == "fusion_node" else "[INFO]" not in proc.log())):
                    time.sleep(0.1)
            time.sleep(0.5)
            for node, sig, proc in batch:
                if sig == "killpg_SIGINT":
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    proc.proc.send_signal(getattr(signal, sig))
            for node, sig, proc in batch:
                code = proc.wait(20)
                log = proc.log()
                runs.append({"node": node, "signal": sig, "exit": code, "traceback": "Traceback" in log,
                             "log": proc.log_path})
        finally:
            for _, _, proc in batch:
                proc.stop(timeout=5.0)
    ok = [r for r in runs if r["exit"] == 0 and not r["traceback"]]
    by = {}
    for r in runs:
        k = f"{r['node']}/{r['signal']}"
        by.setdefault(k, []).append(r["exit"])
    return {"n": len(runs), "clean": len(ok), "exit_codes": by, "runs": runs}




def belief_overhead(c: dict) -> tuple:
    """Issue 14's latency ratio of one headline condition ``c`` (scenario results by name): the e2e p50 ratio of
    ``node`` ÷ ``node_plain`` and, when run, ``node_2`` ÷ ``node_plain_2`` (the reverse-order pair). Returns
    (pair ratios, their geometric mean; None when a p50 is missing)."""
    pairs = [ratio((c[n]["e2e_ms"] or {}).get("p50"), (c[p]["e2e_ms"] or {}).get("p50"))
             for n, p in (("node", "node_plain"), ("node_2", "node_plain_2")) if n in c]
    if not pairs or any(r is None for r in pairs):
        return pairs, None
    return pairs, math.prod(pairs) ** (1.0 / len(pairs))


def section_headline(b: "Bench") -> dict:
    """Issue 12's figures in one run: camera end-to-end p50/p99 and CPU per agent of the fusion node vs an rclpy echo
    node on the same topics, plus the fixed reference chain; 8 agents; idle and with 2 CPU-bound background
    processes; stops over node × signal. With ``--baseline-tree`` the node runs are repeated with the fusion node
    of that checkout (PYTHONPATH) in the same run; outside ``--quick`` the fusion node also runs once on rclpy's
    SingleThreadedExecutor (``node_single``) for the executor comparison. Right after the fusion node, the same node
    runs without evidence accumulation, class evidence and novelty (``node_plain``, :data:`PLAIN_PARAMS`): issue 14's
    latency reference (``belief_overhead_p50`` = node p50 ÷ node_plain p50); outside ``--quick`` the pair runs again
    at the end of the condition in the reverse order (``node_plain_2``, ``node_2``) and ``belief_overhead_p50`` is the
    geometric mean of the two pair ratios (``belief_overhead_pairs``): the two runs of a pair are 10-20 s apart, and
    one pair alone swung from 0.98 to 1.48 with the load of the machine."""
    args = b.args
    T = float(args.headline_seconds)
    out = {"scenario": {"agents": list(HEADLINE_AGENTS), "camera": "320x240 rgb8", "rates_hz": {
        "camera": args.camera_rate, "lidar": args.lidar_rate, "reflectance": args.reflectance_rate},
        "exchange": "each agent shares with the 2 others on /m2vae/latents", "seconds": T},
        "reference_chain_ms": _reference_chain(b, 30 if args.quick else 300), "conditions": {}}
    variants = {"node": None}
    if args.baseline_tree:
        variants["baseline"] = {"PYTHONPATH": os.path.abspath(args.baseline_tree)}
    for cond in (("idle",) if args.quick else ("idle", "load")):
        bg = _busy_loops(2) if cond == "load" else []
        try:
            time.sleep(0.5 if bg else 0.0)
            c = {"load_average_before": load_average()}
            c["echo"] = _scenario(b, "echo", f"{cond}_echo", T)
            for name, env in variants.items():
                c[name] = _scenario(b, "node", f"{cond}_{name}", T, env)
                if name == "node":  # the same node without accumulation, class evidence and novelty (issue 14)
                    c["node_plain"] = _scenario(b, "node", f"{cond}_node_plain", T, **PLAIN_PARAMS)
                if not args.quick:  # quick: the scaling section's 1-2 agents cover the multi-node path
                    c[f"{name}_8_agents"] = _eight(b, float(args.eight_seconds), env)
            if not args.quick:  # the same node on rclpy's SingleThreadedExecutor: what the EventsExecutor buys
                c["node_single"] = _scenario(b, "node", f"{cond}_node_single", T, executor="single")
                # issue 14's pair again in the reverse order (node, plain, …, plain, node: drift of the machine's
                # load over the condition cancels in the product of the two pair ratios)
                c["node_plain_2"] = _scenario(b, "node", f"{cond}_node_plain_2", T, **PLAIN_PARAMS)
                c["node_2"] = _scenario(b, "node", f"{cond}_node_2", T)
            c["load_average_after"] = load_average()
        finally:
            _end(bg)
        ref = out["reference_chain_ms"]["p50"]
        echo = (c["echo"]["e2e_ms"] or {}).get("p50")
        c["floor_p50_ms"] = echo + ref if echo is not None else None
        for name in [*variants, *(k for k in ("node_plain", "node_single", "node_plain_2", "node_2") if k in c)]:
            p50 = (c[name]["e2e_ms"] or {}).get("p50")
            c[f"{name}_p50_to_floor"] = ratio(p50, c["floor_p50_ms"])
        c["belief_overhead_pairs"], c["belief_overhead_p50"] = belief_overhead(c)
        out["conditions"][cond] = c
    out["stops"] = _stops(b, int(args.stops))
    return out


def headline_targets(h: dict) -> list:
    idle, load = h["conditions"]["idle"], h["conditions"].get("load", {})
    e8 = idle.get("node_8_agents") or {"agents": 8}
    rows = [target("CPU per agent, idle (% of a core)", idle["node"]["cpu_percent_per_agent"], "<=", 12.0, " %",
                   f"echo {fmt(idle['echo']['cpu_percent_per_agent'])} %"),
            target("end-to-end p50 ÷ (echo + reference chain), idle", idle["node_p50_to_floor"], "<=", 1.3),
            target("end-to-end p50 ÷ (echo + reference chain), 2 busy processes", load.get("node_p50_to_floor"), "<=",
                   1.3),
            target(f"{e8['agents']} agents: camera frames processed (%)", e8.get("camera_processed_percent"), ">=",
                   95.0, " %"),
            target(f"{e8['agents']} agents: camera p99, median over nodes (ms)",
                   e8.get("camera_p99_ms_median_over_nodes"), "<=", 33.0, " ms"),
            target(f"{e8['agents']} agents: total CPU (% of a core)", e8.get("cpu_percent_total"), "<=", 150.0, " %"),
            target("accumulation + class evidence + novelty: e2e p50 ÷ the node without them, idle",
                   idle.get("belief_overhead_p50"), "<=", 1.10,
                   detail=(f"pairs {'/'.join(fmt(r) for r in idle.get('belief_overhead_pairs', []))}"
                           + (f"; 2 busy processes: {fmt(load.get('belief_overhead_p50'))} (pairs "
                              f"{'/'.join(fmt(r) for r in load.get('belief_overhead_pairs', []))})" if load else ""))),
            target("stops exiting 0 without traceback", h["stops"]["clean"], ">=", float(h["stops"]["n"]),
                   detail=f"of {h['stops']['n']}")]
    return rows


def format_headline(h: dict) -> str:
    lines = [f"headline scenario: {len(h['scenario']['agents'])} agents, camera 320x240 @ "
             f"{h['scenario']['rates_hz']['camera']:g} Hz + LiDAR {h['scenario']['rates_hz']['lidar']:g} Hz + "
             f"reflectance {h['scenario']['rates_hz']['reflectance']:g} Hz, exchange with 2 peers; "
             f"reference chain (per-network onnxruntime sessions, camera) p50 {fmt(h['reference_chain_ms']['p50'])} ms"]
    rows = []
    for cond, c in h["conditions"].items():
        for name in [k for k in ("echo", "node", "node_plain", "node_single", "node_plain_2", "node_2", "baseline")
                     if k in c]:
            r = c[name]
            e = r["e2e_ms"] or {}
            e8 = c.get(f"{name}_8_agents") or {}
            rows.append([cond, name, fmt(e.get("p50")), fmt(e.get("p99")), f"{r['camera_answered']}/{r['camera_sent']}",
                         fmt(r["cpu_percent_per_agent"]), fmt(c.get(f"{name}_p50_to_floor")),
                         fmt(e8.get("camera_processed_percent")), fmt(e8.get("camera_p99_ms_median_over_nodes")),
                         fmt(e8.get("cpu_percent_total")), f"{c['load_average_before']} → {c['load_average_after']}"])
    lines.append(table(["condition", "node", "e2e p50 ms", "e2e p99 ms", "camera answered", "CPU %/agent",
                        "p50 ÷ floor", "8 agents processed %", "8 agents cam p99 ms", "8 agents CPU %",
                        "load average"], rows, "camera end-to-end (feeder publish → latent here) and CPU"))
    s = h["stops"]
    lines.append(f"stops: {s['clean']}/{s['n']} exit 0 without traceback; exit codes " +
                 ", ".join(f"{k}: {v}" for k, v in s["exit_codes"].items()))
    return "\n".join(lines)


# -- section 5: Fast DDS profile ----------------------------------------------------------------------------------
def section_fastdds(b: Bench, profile: str) -> dict:
    out = {"profile": profile, "cases": {}}
    sizes_ = [(640, 480)] if b.args.quick else [(640, 480), (320, 240)]
    saved = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    try:
        for label, prof in (("with_profile", profile), ("without_profile", None)):
            if prof:  # the children copy os.environ when they start
                os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = prof
            else:
                os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
            pong = b.child(f"pong_{label}", {"role": "pong"})
            procs = [pong]
            try:
                b.wait_file(pong, "ready_file", 60)
                ping = b.child(f"ping_{label}", {"role": "ping", "sizes": sizes_, "n": b.args.pings, "warmup": 5})
                procs.append(ping)
                res = b.wait_file(ping, "result_file", 60 + 3 * b.args.pings * len(sizes_))
                for key, c in res["cases"].items():
                    out["cases"].setdefault(key, {})[label] = {"rtt_ms": stats_ms(c["rtt_s"]), "lost": c["lost"],
                                                               "bytes": c["bytes"]}
            finally:
                b.stop(procs)
    finally:
        if saved is None:
            os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        else:
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = saved
    for case in out["cases"].values():
        w_, wo = case.get("with_profile", {}).get("rtt_ms"), case.get("without_profile", {}).get("rtt_ms")
        case["speedup_p50"] = ratio(wo and wo["p50"], w_ and w_["p50"])
    return out


# -- targets and tables -------------------------------------------------------------------------------------------
def compute_targets(res: dict) -> list:
    rows = headline_targets(res["headline"]) if res.get("headline") else []
    lat = res.get("latency") or {}
    for kind, r in lat.items():
        v = (r.get("node_to_onnxruntime") or {}).get("p50")
        rows.append(target(f"node / onnxruntime p50, {kind}", v, "<=", 1.5, "",
                           f"{fmt(r['node_ms']['p50'])} / {fmt(r.get('onnxruntime_ms', {}).get('p50'), 3)} ms"))
    inf = (res.get("inference") or {}).get("paths") or {}
    for kind, p in inf.items():
        rows.append(target(f"onnxruntime / torch p50, {kind}", p.get("onnxruntime_to_torch"), "<=", 0.3, "",
                           f"{fmt(p['onnxruntime_ms']['p50'], 3)} / {fmt(p['torch_ms']['p50'], 3)} ms"))
    sz = res.get("sizes") or {}
    if sz:
        rows.append(target("640x480 rgb8 image / LatentEmbedding bytes", sz["raw_over_latent"]["image_640x480_rgb8"],
                           ">=", 1000, "×", f"{sz['image_640x480_rgb8']} / {sz['latent_embedding']} B"))
    phases = {p["agents"]: p for p in (res.get("scaling") or {}).get("phases", [])}
    p3 = phases.get(3)
    rows.append(target("3 agents: no backlog (1 = yes)", None if p3 is None else int(p3["no_backlog"]), ">=", 1, "",
                       "" if p3 is None else "; ".join(f"{n['agent']}: {n['why']}" for n in p3["nodes"]
                                                        if n["why"])[:150]))
    rows.append(target("3 agents: CPU of the nodes summed", None if p3 is None else p3["cpu_percent_nodes"], "<",
                       100.0, " %", "" if p3 is None else
                       f"= {p3['cpu_percent_nodes'] / (os.cpu_count() or 1):.0f} % of {os.cpu_count()} cores; "
                       f"machine {fmt(p3['cpu_percent_machine'], 0)} %"))
    p1, p8 = phases.get(1), phases.get(8)
    v = ratio(p8 and p8["p99_ms"], p1 and p1["p99_ms"])
    rows.append(target("p99 at 8 agents / p99 at 1 agent", v, "<=", 1.5, "",
                       "" if v is None else f"{fmt(p8['p99_ms'])} / {fmt(p1['p99_ms'])} ms"))
    rss = [n["rss_mb"] for p in phases.values() for n in p["nodes"]]
    rows.append(target("max RSS of a fusion node", max(rss) if rss else None, "<=", 250.0, " MB",
                       f"over {len(rss)} node processes" if rss else ""))
    return rows


def format_results(res: dict) -> str:
    out = []
    if res.get("headline"):
        out.append(format_headline(res["headline"]))
    b = res["bundle"]
    out.append(f"bundle: {b['origin']} {b['path']} (model_id {b['model_id']}); onnxruntime and torch "
               f"{res['config']['threads']} thread(s); Fast DDS profile for the nodes: "
               f"{'on' if res['config']['fastdds_profile'] else 'off'}; load average at start "
               f"{res['load_average_start']} (1, 5, 15 min); other processes used "
               f"{fmt((res.get('other_processes') or {}).get('other_cpu_percent'), 0)} % of one core on average "
               "during the run")
    inf = res.get("inference")
    lat = res.get("latency") or {}
    if inf or lat:
        rows = []
        for kind in ("camera_320x240", "camera_640x480", "lidar", "reflectance", "peer"):
            r, p = lat.get(kind, {}), (inf or {}).get("paths", {}).get(kind, {})
            if not r and not p:
                continue
            nm, e2e = r.get("node_ms") or {}, r.get("end_to_end_ms") or {}
            o, t, c = p.get("onnxruntime_ms") or {}, p.get("torch_ms") or {}, p.get("convert_preprocess_ms") or {}
            core = p.get("core_path_ms") or {}
            rows.append([kind, fmt(nm.get("p50")), fmt(nm.get("p99")), fmt(e2e.get("p50")), fmt(core.get("p50"), 3),
                         fmt(o.get("p50"), 3), fmt(o.get("p99"), 3), fmt(t.get("p50"), 3), fmt(t.get("p99"), 3),
                         fmt(c.get("p50"), 3),
                         fmt((r.get("node_to_onnxruntime") or {}).get("p50"), 1), fmt(p.get("onnxruntime_to_torch")),
                         f"{r['fused']}/{r['sent']}" if r else "-"])
        out.append(table(["input", "node p50", "node p99", "e2e p50", "core p50", "ort p50", "ort p99", "torch p50",
                          "torch p99", "conv+pre p50", "node/ort", "ort/torch", "fused/sent"], rows,
                         "Per-observation latency (ms). node = receive → publish of latent and belief inside the "
                         "fusion node (its /diagnostics); e2e = publish here → latent received here (the latent goes "
                         "out before the belief); core = the node's worker path "
                         "in process without DDS (conversion, preprocessing, core engine, message building); "
                         "ort / torch = the networks alone (1 thread); conv+pre = conversion + preprocessing"))
        if inf:
            out.append(f"torch weights: {inf['torch_weights']}: {inf['torch_note']}")
    sz = res.get("sizes")
    if sz:
        rows = [["LatentEmbedding", sz["latent_embedding"], "1"]]
        if "class_belief" in sz:
            rows.append(["ClassBelief", sz["class_belief"], "-"])
        for k, v in sz["raw_over_latent"].items():
            rows.append([k, sz[k], f"{v:.0f}" if v >= 10 else f"{v:.2f}"])
        out.append(table(["message", "bytes", "× latent"], rows,
                         f"Serialized sizes (rclpy.serialization; latent {sz['latent_origin']})"))
    cr = res.get("camera_rate")
    if cr:
        rows = []
        for s, r in cr["sizes"].items():
            for st in r["steps"]:
                e = st["end_to_end_ms"]
                rows.append([s, f"{st['rate_hz']:g}", fmt(st["offered_hz"], 1), fmt(st["processed_hz"], 1),
                             st["superseded"], st["lost"], st["dropped"], fmt(st["node_ms"]["p50"]),
                             f"{fmt(e['first_third_p50'], 1)} → {fmt(e['last_third_p50'], 1)}",
                             fmt(st["node_cpu_percent"], 0),
                             {True: "yes", False: "NO", None: "pub-limited"}[st["sustained"]]])
        out.append(table(["size", "rate Hz", "sent Hz", "fused Hz", "superseded", "lost", "dropped", "node p50",
                          "e2e p50 1st→last third", "node CPU %", "sustained"], rows,
                         "Camera rate one node sustains (camera only, belief holds every slot)"))
        out.append("max sustained: " + ", ".join(
            f"{s} {'none' if r['max_sustained_hz'] is None else format(r['max_sustained_hz'], 'g')} Hz"
            + (" or more" if r["publisher_limited"] else "")
            + (f" (next: {r['first_failure']})" if r["first_failure"] else "")
            for s, r in cr["sizes"].items()))
    sc = res.get("scaling")
    if sc:
        rows = []
        for p in sc["phases"]:
            o = p["offered_hz"]
            rows.append([p["agents"], p["feeders"], f"{o['camera']:.0f}/{o['lidar']:.0f}/{o['reflectance']:.0f}",
                         fmt(p["p50_ms"]), fmt(p["p99_ms"]), fmt(p["peer_p99_ms"]), fmt(p["cpu_percent_nodes"], 0),
                         fmt(p["cpu_percent_per_node"], 0), fmt(p["cpu_percent_feeders"], 0),
                         fmt(p["cpu_percent_machine"], 0), fmt(p["rss_mb_max"], 0), fmt(p["uss_mb_max"], 0),
                         "yes" if p["no_backlog"] else "NO"])
        w, h = sc["camera_size"]
        secs = fmt(sc["phases"][0]["seconds"], 0) if sc["phases"] else "-"
        out.append(table(["agents", "pubs", "cam/lidar/refl Hz", "p50 ms", "p99 ms", "peer p99", "nodes CPU %",
                          "per node %", "pubs CPU %", "machine %", "RSS MB", "USS MB", "no backlog"], rows,
                         f"Agents on this machine ({os.cpu_count()} cores; camera {w}x{h} rgb8; latents exchanged: "
                         f"{'yes' if sc['exchange'] else 'no'}; {secs} s per row; node latency over the last "
                         f"{sc['latency_window']} samples per sensor, p50 = median over nodes and sensors, p99 = "
                         "worst node and sensor; CPU % = one core busy, machine % = all cores, everything running)"))
        cd = res.get("cpu_default_rates")
        if cd:
            r_ = cd["rates_hz"]
            out.append(f"CPU at default rates (camera {r_['camera']:g} Hz {w}x{h} + LiDAR {r_['lidar']:g} Hz + "
                       f"reflectance {r_['reflectance']:g} Hz), one agent: {cd['node_cpu_percent']:.0f} % of one core, "
                       f"RSS {cd['rss_mb']:.0f} MB")
        for p in sc["phases"]:
            bad = [f"{n['agent']}: {n['why']}" for n in p["nodes"] if n["why"]]
            if bad:
                out.append(f"  {p['agents']} agents backlog: " + "; ".join(bad)[:300])
    fd = res.get("fastdds")
    if fd:
        rows = []
        for s, case in fd["cases"].items():
            for label in ("with_profile", "without_profile"):
                c = case.get(label)
                if c:
                    rows.append([s, label.replace("_", " "), fmt(c["rtt_ms"] and c["rtt_ms"]["p50"]),
                                 fmt(c["rtt_ms"] and c["rtt_ms"]["p99"]), c["lost"]])
        out.append(table(["image rgb8", "Fast DDS", "rtt p50 ms", "rtt p99 ms", "lost"], rows,
                         "Round trip between two processes (ping → pong → ping), config/fastdds_shm.xml"))
    out.append(targets_table(res["targets"]))
    return "\n\n".join(out)


# -- main -------------------------------------------------------------------------------------------------------
def run(args) -> int:
    import numpy as np

    from m2vae_fusion.errors import UserError
    from m2vae_fusion.paths import share_path

    base = QUICK if args.quick else FULL
    for key, val in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)
    if args.baseline_tree:
        check_baseline_tree(args.baseline_tree)
    for key in ("samples", "repeats", "pings", "stops"):
        if getattr(args, key) <= 0:
            raise UserError(f"--{key} must be positive")
    for key in ("latency_rate", "rate_seconds", "scaling_seconds", "headline_seconds", "eight_seconds"):
        if not getattr(args, key) > 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive")
    _numbers(args.rates, float, "rates")
    _numbers(args.agents, int, "agents")
    for s in args.rate_sizes.split(","):
        if f"camera_{s.strip()}" not in KIND_RATE_SOURCE:
            raise UserError(f"--rate-sizes: {s!r} is not one of 640x480, 320x240")
    t_begin = time.monotonic()
    others = OtherLoad().start()
    load0 = load_average()
    if load0[0] > 1.5:
        print(f"warning: load average {load0[0]} (1 min) on {os.cpu_count()} cores: other processes compete; the "
              "numbers will be pessimistic", file=sys.stderr)
    profile = share_path("config", "fastdds_shm.xml")
    if not os.path.isfile(profile):
        raise UserError(f"{profile}: missing (the Fast DDS profile)")
    domain = isolate_dds(args.domain_id, None if args.no_fastdds_profile else profile)
    tmp = tempfile.mkdtemp(prefix="m2vae_bench_runtime_")
    logs = args.log_dir or os.path.join(tmp, "logs")
    os.makedirs(logs, exist_ok=True)
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C interrupts the benchmark even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = None
    ok = False
    try:
        from m2vae_fusion.benchmarks.inference import make_observations, time_paths
        from m2vae_fusion.benchmarks.latency import _bundle

        model_dir, origin = _bundle(args, tmp)
        with open(os.path.join(model_dir, "manifest.json")) as f:
            manifest = json.load(f)
        obs = make_observations(manifest, 4 if args.quick else 8, args.seed)
        obs_path = os.path.join(tmp, "observations.npz")
        np.savez(obs_path, **obs)
        res = {"benchmark": "runtime", "format_version": 1,
               "config": {k: getattr(args, k) for k in (*FULL, "quick", "threads", "seed", "camera_rate", "lidar_rate",
                                                        "reflectance_rate", "agents_per_feeder", "scaling_camera_size",
                                                        "no_exchange", "skip", "baseline_tree")},
               "machine": machine_info(), "load_average_start": load0,
               "bundle": {"path": model_dir, "origin": origin, "model_id": manifest["model_id"],
                          "feature_dim": manifest["feature_dim"], "latent_dim": manifest["latent_dim"],
                          "untrained": bool(((manifest.get("training") or {}).get("config") or {}).get("untrained"))},
               "observations": {"per_kind": int(len(obs["lidar"])), "seed": args.seed,
                                "kinds": ["camera_320x240", "camera_640x480", "lidar", "reflectance", "peer"]},
               "section_seconds": {}}
        res["config"].update({"fastdds_profile": None if args.no_fastdds_profile else profile, "domain_id": domain,
                              "log_dir": logs})
        if "inference" not in args.skip:
            print("[1/5] onnxruntime and torch on the node's networks ...", flush=True)
            t = time.monotonic()
            res["inference"] = time_paths(model_dir, manifest, obs, args.repeats, threads=args.threads)
            res["section_seconds"]["inference"] = time.monotonic() - t
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        # no rclpy signal handlers: Ctrl-C is a KeyboardInterrupt here, and the finally below stops the children and
        # shuts rclpy down (rclpy's own SIGINT handler shut the context down under the probe's spinning thread, and
        # a Ctrl-C test once waited 90 s for an exit)
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        bench = Bench(args, tmp, logs, model_dir, manifest, obs_path)
        latent = belief = None
        if "headline" not in args.skip:
            print("[0/5] headline figures: echo node, reference chain, fusion node, 8 agents (idle, 2 busy "
                  "processes), stops ...", flush=True)
            t = time.monotonic()
            res["headline"] = section_headline(bench)
            res["section_seconds"]["headline"] = time.monotonic() - t
        if "rate" not in args.skip and "latency" not in args.skip:  # start-up overlaps the latency node's
            bench.rate_node = bench.node("bench_rate", **rate_node_params(args))
        if "latency" not in args.skip:
            print("[2/5] node latency per input ...", flush=True)
            t = time.monotonic()
            res["latency"], latent, belief = section_latency(bench, obs, res.get("inference"))
            res["section_seconds"]["latency"] = time.monotonic() - t
        res["sizes"] = sizes(manifest, obs, latent, belief)
        if "rate" not in args.skip:
            print("[3/5] sustained camera rate ...", flush=True)
            t = time.monotonic()
            res["camera_rate"] = section_rate(bench)
            res["section_seconds"]["rate"] = time.monotonic() - t
        if "scaling" not in args.skip:
            print(f"[4/5] agents {args.agents} ...", flush=True)
            t = time.monotonic()
            res["scaling"] = section_scaling(bench)
            res["section_seconds"]["scaling"] = time.monotonic() - t
            one = next((p for p in res["scaling"]["phases"] if p["agents"] == 1), None)
            if one is not None:
                res["cpu_default_rates"] = {
                    "rates_hz": res["scaling"]["rates_hz"], "camera_size": res["scaling"]["camera_size"],
                    "node_cpu_percent": one["cpu_percent_nodes"], "rss_mb": one["rss_mb_max"]}
        if "fastdds" not in args.skip:
            print("[5/5] Fast DDS profile round trip ...", flush=True)
            t = time.monotonic()
            res["fastdds"] = section_fastdds(bench, profile)
            res["section_seconds"]["fastdds"] = time.monotonic() - t
        ok = True
    finally:
        if bench is not None:
            bench.close()
        try:
            import rclpy

            rclpy.try_shutdown()
        except Exception:
            pass
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if ok and not args.log_dir:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {logs}", file=sys.stderr)
    res["load_average_end"] = load_average()
    res["other_processes"] = others.stop()
    res["targets"] = compute_targets(res)
    res["seconds"] = time.monotonic() - t_begin
    print(format_results(res))
    print(f"({res['seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["section_seconds"].items()) + ")")
    write_result(args.json, res)
    return 0


def main(argv=None) -> int:
    from m2vae_fusion.benchmarks.common import main_for

    return main_for("m2vae_fusion.benchmarks.runtime", HELP, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
