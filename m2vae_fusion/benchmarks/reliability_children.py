"""Processes ``m2vae-fusion bench reliability`` starts next to the fusion nodes (one role each, rclpy, no torch). They
run as child processes so that they can be placed in a network namespace (``ip netns exec``) with the nodes.

- ``monitor``: records what a set of agents publish (ClassBelief on ``/<agent>/belief``, LatentEmbedding on the
  shared topic), the simulated world's ground truth, and the newest ``/diagnostics`` values of every node; counts
  corrupt outputs of the agents named in ``agents`` (non-finite latents, non-finite or non-normalised beliefs;
  m2vae_fusion.benchmarks.hostile) and,
  for every shared latent received from another agent, the age of that agent's newest evidence in it (receive wall
  time − newest modality stamp whose source is the sender; the shared topic subscribed best effort, as the agents
  do). Writes everything at the end (SIGTERM/SIGINT).
- ``fuzzer``: publishes hostile messages (m2vae_fusion.benchmarks.hostile) of every kind to the agents' sensor topics
  and the shared latent topic at a fixed rate; must-refuse latents name the target the agent inspects now (from its
  ``target_of_interest``), the others targets of their own (``fuzz_<agent>``), also the ones only the victim refuses
  (``victim_only``: fabricated evidence attributed to the victim, which the other agents merge as a relay). A sensor
  message names no target: the node fuses it into the target announced at its stamp, so the sensor cases a node may
  accept (a valid but odd image or scan, ``must_refuse`` False) would become evidence about an honest target. With ``accepted_sensor: transit``
  (default) they are sent only stamped inside an agent's transit (its announcement of "no target" is at most
  ``transit_window`` s old), where they are parsed and checked but fused into nothing; at other times a must-refuse
  case of the same sensor goes instead. ``accepted_sensor: any`` sends them at any time (they then land in honest
  beliefs: a fake but valid frame on a sensor topic is evidence, which no consistency check can tell from a real
  one). Writes what it sent.

Run as ``python -m m2vae_fusion.benchmarks.reliability_children --ros-args`` with ``M2VAE_BENCH_CHILD=<spec.json>``
(as :mod:`m2vae_fusion.benchmarks.children`): the spec names the role, its parameters, ``ready_file`` (written once
the subscriptions exist / the publishers are matched) and ``result_file``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

ENV = "M2VAE_BENCH_CHILD"


def _write(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class _Stop:
    """SIGTERM / SIGINT set a flag; the role's loop ends and writes its result."""

    def __init__(self):
        self.flag = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_):
        self.flag = True


# -- monitor ----------------------------------------------------------------------------------------------------
def monitor(spec: dict, rclpy, stop: _Stop) -> int:
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray
    from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from m2vae_fusion.benchmarks import hostile
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.stats import status_values

    node = Node(spec.get("name", "rel_monitor"))
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
    t0 = time.time()
    agents = set(spec.get("agents") or [*spec.get("belief_agents", []), *spec.get("age_from", [])])
    out = {"beliefs": [], "latent_ages": [], "corrupt": [], "diag": {}, "truth": {}, "n_latents": 0,
           "n_beliefs": 0, "t0_wall": t0, "diag_history": []}

    def on_belief(msg, agent):
        out["n_beliefs"] += 1
        why = hostile.bad_belief_output(msg)
        if why:
            out["corrupt"].append(why)
            return
        out["beliefs"].append([time.time() - t0, agent, msg.target_id,
                               [round(float(x), 6) for x in msg.probabilities], list(msg.contributors)])

    def on_latent(msg):
        if msg.agent_id not in agents:  # e.g. the fuzzer's own messages on the shared topic
            return
        out["n_latents"] += 1
        why = hostile.bad_latent_output(msg)
        if why:
            out["corrupt"].append(why)
        now = time.time_ns()
        own = [conv.stamp_to_ns(s) for s, src in zip(msg.modality_stamps, msg.modality_sources)
               if src == msg.agent_id]
        if own and msg.agent_id in spec.get("age_from", []):
            out["latent_ages"].append([now / 1e9 - t0, msg.agent_id, (now - max(own)) / 1e9])

    def on_diag(msg):
        for st in msg.status:
            vals = status_values(DiagnosticArray(status=[st]))
            vals["_t"] = time.time() - t0
            out["diag"][st.name] = vals
            if spec.get("diag_history"):
                out["diag_history"].append([vals["_t"], st.name, {k: v for k, v in vals.items()
                                                                  if k.startswith("latency_ms.")}])

    def on_truth(msg):
        data = json.loads(msg.data)
        out["truth"] = {k: v["class_name"] for k, v in data["objects"].items()}

    subs = [node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos)]
    for a in spec.get("belief_agents", []):
        subs.append(node.create_subscription(ClassBelief, f"/{a}/belief", lambda m, a=a: on_belief(m, a), qos))
    if spec.get("shared_topic"):  # as the agents subscribe (best effort: a lost latent is not repaired late)
        subs.append(node.create_subscription(LatentEmbedding, spec["shared_topic"], on_latent, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)))
    for a in spec.get("latent_agents", []):
        subs.append(node.create_subscription(LatentEmbedding, f"/{a}/latent", on_latent, qos))
    if spec.get("truth_topic"):
        subs.append(node.create_subscription(String, spec["truth_topic"], on_truth, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)))
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    _write(spec["ready_file"], {"pid": os.getpid()})
    while not stop.flag and rclpy.ok():
        ex.spin_once(timeout_sec=0.05)
    out["n_corrupt"] = len(out["corrupt"])
    out["corrupt"] = out["corrupt"][:50]
    _write(spec["result_file"], out)
    del np
    return 0


# -- fuzzer -----------------------------------------------------------------------------------------------------
def fuzzer(spec: dict, rclpy, stop: _Stop) -> int:
    import numpy as np
    from m2vae_fusion_msgs.msg import LatentEmbedding, TargetOfInterest
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, LaserScan

    from m2vae_fusion.benchmarks import hostile

    with open(spec["manifest"]) as f:
        manifest = json.load(f)
    lidar_cfg = dict(manifest["inputs"]["lidar"]["preprocessing"])
    k = int(manifest["inputs"]["reflectance"]["preprocessing"]["beams"])
    sensors = [c for c in hostile.sensor_cases(lidar_cfg, k, cloud=False)]
    agents = list(spec["agents"])
    node = Node("rel_fuzzer")
    best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
    topics = {"camera": ("camera/image_raw", Image), "lidar": ("scan", LaserScan), "reflectance": ("reflectance",
                                                                                                   LaserScan)}
    pubs = {(a, s): node.create_publisher(t[1], f"/{a}/{t[0]}", best_effort) for a in agents
            for s, t in topics.items()}
    shared = node.create_publisher(LatentEmbedding, spec["shared_topic"], reliable)
    current = {a: "" for a in agents}
    empty_since = {a: None for a in agents}  # stamp (ns) of the agent's newest "no target" announcement in force
    from m2vae_fusion.core import messages as conv

    def on_target(msg, a):
        current[a] = msg.target_id
        empty_since[a] = None if msg.target_id else conv.stamp_to_ns(msg.header.stamp)

    subs = [node.create_subscription(TargetOfInterest, f"/{a}/target_of_interest",
                                     lambda m, a=a: on_target(m, a), QoSProfile(depth=10)) for a in agents]
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    deadline = time.monotonic() + float(spec.get("match_timeout", 60))
    while time.monotonic() < deadline and not stop.flag:
        ex.spin_once(timeout_sec=0.05)
        if all(p.get_subscription_count() >= 1 for p in pubs.values()) and shared.get_subscription_count() >= 1:
            break
    _write(spec["ready_file"], {"pid": os.getpid()})
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    accepted = spec.get("accepted_sensor", "transit")
    if accepted not in ("transit", "any"):
        raise ValueError(f"accepted_sensor must be transit or any, got {accepted!r}")
    window_ns = int(float(spec.get("transit_window", 0.6)) * 1e9)
    refused = {src: [c for c in sensors if c.source == src and c.must_refuse] for src in topics}
    rate, total = float(spec["rate"]), int(spec["messages"])
    sent: dict = {}
    in_transit = 0  # accepted-kind sensor messages sent stamped inside a transit
    t_next = time.monotonic()
    i = 0
    latent_cases = {a: hostile.latent_cases(manifest["model_id"], int(manifest["latent_dim"]), victim=a,
                                            peer=spec.get("peer", "fuzz_peer")) for a in agents}
    while i < total and not stop.flag and rclpy.ok():
        ex.spin_once(timeout_sec=0.0)
        now = time.monotonic()
        if now < t_next:
            time.sleep(min(t_next - now, 0.01))
            continue
        t_next += 1.0 / rate
        a = agents[i % len(agents)]
        if rng.random() < float(spec.get("latent_fraction", 0.4)):
            c = latent_cases[a][int(rng.integers(len(latent_cases[a])))]
            # the shared topic reaches every agent: a case only the victim refuses goes about a target of its own
            target = current[a] if (c.must_refuse and not c.victim_only and current[a]) else f"fuzz_{a}"
            shared.publish(c.make(node.get_clock().now().nanoseconds, target))
        else:
            c = sensors[int(rng.integers(len(sensors)))]
            stamp = node.get_clock().now().nanoseconds
            if not c.must_refuse and accepted == "transit":
                t_empty = empty_since[a]
                if t_empty is None or not 0 <= stamp - t_empty <= window_ns:
                    c = refused[c.source][int(rng.integers(len(refused[c.source])))]
                else:
                    in_transit += 1
            pubs[(a, c.source)].publish(c.make(stamp))
        key = f"{c.counter_source}.{c.name}"
        sent[key] = sent.get(key, 0) + 1
        i += 1
    by_source: dict = {}
    for key, n in sent.items():
        by_source[key.split(".")[0]] = by_source.get(key.split(".")[0], 0) + n
    _write(spec["result_file"], {"sent": i, "by_case": sent, "by_source": by_source, "accepted_sensor": accepted,
                                 "accepted_sensor_in_transit": in_transit})
    while not stop.flag and rclpy.ok():  # stay (matched) until told to stop
        ex.spin_once(timeout_sec=0.1)
    del subs
    return 0


def main() -> int:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    path = os.environ.get(ENV)
    if not path:
        print(f"reliability_children: set {ENV} to a spec file", file=sys.stderr)
        return 2
    with open(path) as f:
        spec = json.load(f)
    role = {"monitor": monitor, "fuzzer": fuzzer}.get(spec.get("role"))
    if role is None:
        print(f"reliability_children: unknown role {spec.get('role')!r} in {path}", file=sys.stderr)
        return 2
    rclpy.init(args=sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = _Stop()
    try:
        return role(spec, rclpy, stop)
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
