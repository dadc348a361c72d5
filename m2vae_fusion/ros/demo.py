"""The main job: the simulated world plus one fusion-node process per agent, exchanging latents over real DDS.

Starts ``sim_world`` and ``fusion_node`` as separate processes with parameters from ``config/sim_world.yaml`` and
``config/fusion.yaml`` (overridden per agent), records what the agents publish (``belief``, ``latent``) and the
ground truth, stops every child process (also on Ctrl-C, SIGTERM or an error), and hands the record to
:mod:`m2vae_fusion.report`. The record's ``meta["preprocessing"]`` holds, per agent, the fusion node's final
``/diagnostics`` counters of observations ``processed.<sensor>`` and of crops that took the preprocessing fallback
``crop_fallback.<sensor>`` (the simulated world gives each TargetOfInterest position in the agent's base frame, so
with a bundle that crops these stay 0; :func:`preprocessing_counters`). DDS stays on localhost with a domain id of
its own; large images go through the Fast DDS shared-memory profile ``config/fastdds_shm.xml``.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from m2vae_fusion.errors import UserError
from m2vae_fusion.paths import default_bundle_path, share_path
from m2vae_fusion.report import BeliefEvent, LatentEvent, RunRecord

CLASS_NAMES = [f"{c}_{s}_{m}" for c in ("red", "green") for s in ("cylinder", "cube") for m in ("matte", "shiny")]
from m2vae_fusion.core.modalities import MODALITIES as SENSORS


@dataclass
class DemoConfig:
    """What the demo runs. ``agents``: one sensor rig per agent (``"camera"``, ``"all"``, ``"lidar+reflectance"``);
    ``objects``: class names of the objects in the world (one each; None: the world's default tour — the 8 easy
    classes, or ``num_objects`` (default 10) hard-world classes drawn by ``seed`` from all 27); ``world``: ``easy`` or
    ``hard`` (None: the world the bundle was trained on, see :func:`bundle_world`); ``duration``: seconds of the tour
    (None: every agent inspects every object once); ``exchange``: agents subscribe to each other's latents."""

    agents: list = field(default_factory=lambda: list(SENSORS))
    objects: list | None = None
    world: str | None = None
    num_objects: int | None = None
    seed: int = 0
    duration: float | None = None
    exchange: bool = True
    model_dir: str = ""
    inspect_duration: float = 4.0
    transit_duration: float = 1.0
    log_dir: str | None = None
    startup_timeout: float = 60.0
    record_bag: str | None = None


def parse_rig(spec: str) -> list:
    """``"all"`` / ``"camera"`` / ``"lidar+reflectance"`` → sensor list. Raises UserError on unknown names."""
    s = spec.strip().lower()
    if s == "all":
        return list(SENSORS)
    parts = [p for p in s.replace("+", " ").split() if p]
    bad = [p for p in parts if p not in SENSORS]
    if bad or not parts:
        raise UserError(f"--agents: unknown sensor rig {spec!r}; use 'all' or sensors joined by '+' from {SENSORS}")
    return [m for m in SENSORS if m in parts]


def isolate_dds(domain_id: int | None = None) -> int:
    """Keep DDS discovery on this machine and on a domain of its own; use the shared-memory profile. Must run
    before ``rclpy.init()``; child processes inherit it.

    The domain is ``domain_id`` if given, else the caller's ``ROS_DOMAIN_ID`` when set (so a demo can be held to an
    assigned domain), else one of 101..200 from the process id (away from the default 0 and the tests' 1..100).

    Returns:
        the domain id in use (int, 0..232).

    Raises:
        UserError: ``ROS_DOMAIN_ID`` is set but is not an integer in 0..232 (the range ROS 2 accepts on Linux).
    """
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is None:
        given = os.environ.get("ROS_DOMAIN_ID", "").strip()
        if given:
            try:
                domain_id = int(given)
            except ValueError:
                domain_id = -1
            if not 0 <= domain_id <= 232:
                raise UserError(f"ROS_DOMAIN_ID={given!r}: expected an integer in 0..232 (or unset it to let the "
                                "demo pick a domain of its own)")
        else:
            domain_id = 101 + os.getpid() % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    profile = share_path("config", "fastdds_shm.xml")
    if os.path.isfile(profile):
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", profile)
    return domain_id


#: /diagnostics counters of each fusion node the demo reports (``meta["preprocessing"]``)
COUNTER_PREFIXES = ("processed.", "crop_fallback.", "received.target")


def preprocessing_counters(values: dict) -> dict:
    """The counters of one fusion node's ``/diagnostics`` values that tell how its observations were preprocessed:
    ``processed.<sensor>``, ``crop_fallback.<sensor>`` (crops without a usable target position), ``received.target``
    (TargetOfInterest messages that were new). Returns ``{name: int}``; a counter the node never incremented is
    absent."""
    out = {}
    for k, v in values.items():
        if k.startswith(COUNTER_PREFIXES) and isinstance(v, (int, float)):
            out[k] = int(v)
    return dict(sorted(out.items()))


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def tour_duration(cfg: DemoConfig) -> float:
    """Seconds until every agent has inspected every object once (agents start at different objects)."""
    n = len(cfg.objects) if cfg.objects is not None else (cfg.num_objects or len(CLASS_NAMES))
    return n * (cfg.inspect_duration + cfg.transit_duration) + 1.0


def bundle_world(manifest: dict) -> str:
    """The simulated world a bundle was trained on: ``training.dataset.world`` of its manifest (bundles trained on a
    hard-world data set record it), else the world whose class names equal the bundle's, else ``"easy"`` (the
    bundles trained before the hard world existed)."""
    from m2vae_fusion.data.classes import world_of_class_names

    ds = ((manifest.get("training") or {}).get("dataset") or {}) if isinstance(manifest, dict) else {}
    w = ds.get("world") if isinstance(ds, dict) else None
    if isinstance(w, str) and w:
        return w
    return world_of_class_names(manifest.get("class_names") or []) or "easy"


def resolve_world(cfg: DemoConfig, manifest: dict) -> DemoConfig:
    """Fill in ``cfg.world`` (from the bundle) and ``cfg.objects`` (the world's default tour); check the names.

    Raises:
        UserError: an unknown world, unknown class names or a bad number of objects.
    """
    from m2vae_fusion.data.classes import WORLDS

    world = cfg.world or bundle_world(manifest)
    if world not in WORLDS:
        raise UserError(f"--world must be one of {sorted(WORLDS)}, got {world!r}")
    names = WORLDS[world].class_names
    objects = cfg.objects
    if objects is None:
        if world == "hard":
            from m2vae_fusion.ros.sim_world_node import tour_classes

            n = cfg.num_objects or 10
            if not 1 <= n <= 64:
                raise UserError(f"--objects: a number must be 1..64, got {n}")
            objects = [names[c] for c in tour_classes(cfg.seed, n)]
        else:
            n = cfg.num_objects or len(names)
            if not 1 <= n <= len(names):
                raise UserError(f"--objects: a number must be 1..{len(names)}, got {n}")
            objects = list(names[:n])
    bad = [o for o in objects if o not in names]
    if bad or not objects:
        raise UserError(f"--objects: unknown class names {bad} in the {world} world; expected names from {names}")
    from dataclasses import replace

    return replace(cfg, world=world, objects=list(objects))


def run_demo(cfg: DemoConfig, progress: bool = True, say=print) -> RunRecord:
    """Run the simulated multi-agent demo and return what was recorded (see :class:`m2vae_fusion.report.RunRecord`).

    Raises:
        UserError: bad configuration, a missing model bundle, or a node that fails to start (its log is named).
    """
    rigs = [parse_rig(a) for a in cfg.agents]
    if not rigs:
        raise UserError("--agents: at least one agent is needed")
    model_dir = os.path.abspath(cfg.model_dir or default_bundle_path())
    from m2vae_fusion.core.bundle import read_manifest

    manifest = read_manifest(model_dir)  # a missing bundle stops here, naming the file
    cfg = resolve_world(cfg, manifest)
    class_names = manifest.get("class_names") or CLASS_NAMES
    domain = isolate_dds()
    log_dir = cfg.log_dir or tempfile.mkdtemp(prefix="m2vae_demo_")
    os.makedirs(log_dir, exist_ok=True)
    names = [f"agent{i}" for i in range(len(rigs))]
    rig_text = ", ".join(f"{n}={'+'.join(r)}" for n, r in zip(names, rigs))
    say(f"demo: {len(rigs)} agents ({rig_text}), {cfg.world} world, {len(cfg.objects)} "
        f"objects, exchange {'on' if cfg.exchange else 'off'}, model {os.path.basename(model_dir)} "
        f"({manifest['model_id']}), ROS_DOMAIN_ID={domain}, logs in {log_dir}")

    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from m2vae_fusion.ros.harness import NodeProcess, Probe
    from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding

    procs = []
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    rclpy.init()
    probe = None
    recorder = None
    rec = RunRecord(class_names, names, {})
    rec.meta.update({"exchange": cfg.exchange, "seed": cfg.seed, "model_id": manifest["model_id"], "world": cfg.world,
                     "rigs": {n: r for n, r in zip(names, rigs)}, "objects": list(cfg.objects),
                     "class_belief_head": bool(manifest.get("class_names") and manifest["networks"].get("head"))})
    try:
        probe = Probe("demo_monitor")
        t0 = time.monotonic()
        truth_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
        truth = {}

        def on_truth(msg):
            data = json.loads(msg.data)
            truth.update({k: v["class_name"] for k, v in data["objects"].items()})
            truth["_t"] = time.monotonic()

        def on_belief(msg, agent):
            t = time.monotonic() - t0
            ev = BeliefEvent(t, agent, msg.target_id, np.asarray(msg.probabilities, np.float64),
                             tuple(msg.modalities), tuple(msg.contributors))
            rec.beliefs.append(ev)
            if agent in ev.contributors:
                rec.first_observation.setdefault((agent, msg.target_id), t)

        def on_latent(msg, agent):
            rec.latents.append(LatentEvent(time.monotonic() - t0, agent, msg.target_id,
                                           np.asarray(msg.mean, np.float64), tuple(msg.modalities)))

        probe.subscribe("/sim/ground_truth", String, truth_qos, callback=on_truth)
        for n in names:
            probe.subscribe(f"/{n}/belief", ClassBelief, callback=lambda m, a=n: on_belief(m, a))
            probe.subscribe(f"/{n}/latent", LatentEmbedding, callback=lambda m, a=n: on_latent(m, a))

        fusion_yaml = share_path("config", "fusion.yaml")
        for n, rig in zip(names, rigs):
            params = {"agent_id": n, "model_dir": model_dir, "modalities": rig,
                      "shared_latent_topic": "/m2vae/latents" if cfg.exchange else "",
                      "belief_ttl": 3600.0, "max_targets": max(16, 2 * len(cfg.objects)),
                      "max_latent_age": -1.0}
            procs.append(NodeProcess("m2vae_fusion.ros.fusion_node", f"/{n}", params, log_dir,
                                     params_files=[fusion_yaml]))
        # fusion nodes first (loading models takes a moment), then the world, so no early evidence is lost
        deadline = time.monotonic() + cfg.startup_timeout
        for n, p in zip(names, procs):
            while not probe.node.count_publishers(f"/{n}/belief"):
                if not p.alive():
                    raise UserError(f"fusion node {n} exited at start-up (status {p.proc.returncode}); its log "
                                    f"{p.log_path}:\n{p.log()[-2000:]}")
                if time.monotonic() > deadline:
                    raise UserError(f"fusion node {n} did not start within {cfg.startup_timeout:.0f} s; see "
                                    f"{p.log_path}")
                time.sleep(0.1)
        duration = cfg.duration if cfg.duration else tour_duration(cfg)
        sim_params = {"num_agents": len(rigs), "sensors": ["+".join(r) for r in rigs], "objects": list(cfg.objects),
                      "world": cfg.world,
                      "seed": int(cfg.seed), "inspect_duration": float(cfg.inspect_duration),
                      "transit_duration": float(cfg.transit_duration)}
        sim = NodeProcess("m2vae_fusion.ros.sim_world_node", "", sim_params, log_dir, name="sim_world",
                          params_files=[share_path("config", "sim_world.yaml")])
        procs.append(sim)
        if cfg.record_bag:
            from m2vae_fusion.ros.record import BagRecorder

            recorder = BagRecorder(probe.node, cfg.record_bag, namespaces=[f"/{n}" for n in names])
        while "_t" not in truth:
            if not sim.alive():
                raise UserError(f"sim_world exited at start-up; its log {sim.log_path}:\n{sim.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise UserError(f"sim_world published no ground truth within {cfg.startup_timeout:.0f} s; see "
                                f"{sim.log_path}")
            time.sleep(0.05)
        t_start = time.monotonic()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(round(duration)), unit="s", desc="touring", leave=False, disable=None)
        while (elapsed := time.monotonic() - t_start) < duration:
            dead = [p for p in procs if not p.alive()]
            if dead:
                raise UserError(f"{dead[0].name} stopped during the run; its log {dead[0].log_path}:\n"
                                f"{dead[0].log()[-2000:]}")
            time.sleep(0.2)
            if bar is not None:
                bar.n = min(int(elapsed), bar.total)
                bar.refresh()
        if bar is not None:
            bar.close()
        time.sleep(0.5)  # the last observations' beliefs are in flight
        # the nodes' counters after the tour (a /diagnostics status sent after the tour ended)
        t_end = time.monotonic()
        rec.meta["preprocessing"] = {}
        for n in names:
            vals = probe.diagnostics(f"/{n}/fusion_node", after=t_end, timeout=3.0) or \
                probe.diagnostics(f"/{n}/fusion_node", timeout=0.0) or {}
            rec.meta["preprocessing"][n] = preprocessing_counters(vals)
        if recorder is not None:
            recorder.close()
            say(f"demo: recorded {recorder.count} messages to {cfg.record_bag}")
            recorder = None
        rec.truth = {k: v for k, v in truth.items() if not k.startswith("_")}
        rec.meta["duration_s"] = round(duration, 1)
        return rec
    except _Terminated:
        raise KeyboardInterrupt from None
    finally:
        if recorder is not None:  # an error or Ctrl-C: still close the bag so that it can be read
            recorder.close()
        for p in reversed(procs):
            p.stop(timeout=5.0)
        if probe is not None:
            probe.close()
            probe.node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        signal.signal(signal.SIGTERM, old_term)
