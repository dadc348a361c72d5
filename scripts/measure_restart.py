"""Measure how fast a crashed and restarted agent is back to full accuracy (issue 13, item 4).

The demo's set-up (sim_world + one fusion-node process per single-sensor agent, exchanging latents on
/m2vae/latents, the shipped bundle): after ``--kill-at`` seconds of the tour, agent0 is killed with SIGKILL and
started again under the same agent id. Printed: seconds from the restarted node being up (its first /diagnostics)
until its beliefs about every target the other agents believed correctly before the kill are correct again, and
the restarted node's ``dropped.peer.spoofed`` and ``provenance.earlier_incarnation`` counters.

Run: ``.venv/bin/python scripts/measure_restart.py [--kill-at 22] [--seed 0]`` (uses ROS_DOMAIN_ID when set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-at", type=float, default=22.0, help="seconds into the tour when agent0 is killed")
    ap.add_argument("--wait", type=float, default=20.0, help="seconds to wait for full accuracy after the restart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from m2vae_fusion.core.bundle import read_manifest
    from m2vae_fusion.core.modalities import MODALITIES
    from m2vae_fusion.paths import default_bundle_path, share_path
    from m2vae_fusion.ros.demo import isolate_dds

    model_dir = os.path.abspath(default_bundle_path())
    manifest = read_manifest(model_dir)
    classes = manifest["class_names"]
    domain = isolate_dds()
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from m2vae_fusion.ros.harness import NodeProcess, Probe
    from m2vae_fusion_msgs.msg import ClassBelief

    logs = tempfile.mkdtemp(prefix="m2vae_restart_")
    names = [f"agent{i}" for i in range(len(MODALITIES))]
    rclpy.init()
    probe = Probe("restart_monitor")
    latest: dict = {}     # (agent, target) → (monotonic time, argmax class)
    truth: dict = {}

    def on_truth(msg):
        truth.update({k: v["class_name"] for k, v in json.loads(msg.data)["objects"].items()})

    def on_belief(msg, agent):
        latest[(agent, msg.target_id)] = (time.monotonic(), classes[int(np.argmax(msg.probabilities))])

    probe.subscribe("/sim/ground_truth", String, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                                            durability=DurabilityPolicy.TRANSIENT_LOCAL),
                    callback=on_truth)
    for n in names:
        probe.subscribe(f"/{n}/belief", ClassBelief, callback=lambda m, a=n: on_belief(m, a))

    def fusion(n, rig, tag=""):
        params = {"agent_id": n, "model_dir": model_dir, "modalities": [rig], "shared_latent_topic": "/m2vae/latents",
                  "belief_ttl": 3600.0, "max_targets": 16, "max_latent_age": -1.0, "diagnostics_period": 0.2}
        return NodeProcess("m2vae_fusion.ros.fusion_node", f"/{n}", params, logs, name=n + tag,
                           params_files=[share_path("config", "fusion.yaml")])

    procs = {n: fusion(n, rig) for n, rig in zip(names, MODALITIES)}
    sim = None
    result = {"ros_domain_id": domain, "kill_at_s": args.kill_at, "seed": args.seed}
    try:
        for n in names:
            assert probe.diagnostics(f"/{n}/fusion_node", timeout=60) is not None, procs[n].log()
        sim = NodeProcess("m2vae_fusion.ros.sim_world_node", "", {"num_agents": len(names), "sensors": list(MODALITIES),
                                                                   "seed": args.seed}, logs, name="sim_world",
                          params_files=[share_path("config", "sim_world.yaml")])
        t0 = time.monotonic()
        time.sleep(args.kill_at)
        known = {t for (a, t), (_, c) in latest.items() if a != names[0] and truth.get(t) == c}
        result["targets_known_by_peers"] = len(known)
        procs[names[0]].proc.kill()
        procs[names[0]].proc.wait(5)
        procs[names[0]].stop()
        t_kill = time.monotonic()
        for key in [k for k in latest if k[0] == names[0]]:
            del latest[key]
        procs[names[0]] = fusion(names[0], MODALITIES[0], "_restarted")
        assert probe.diagnostics(f"/{names[0]}/fusion_node", after=t_kill, timeout=60) is not None
        t_up = time.monotonic()
        full = None
        while time.monotonic() - t_up < args.wait:
            ok = sum(1 for t in known if latest.get((names[0], t), (0, None))[1] == truth.get(t))
            if ok == len(known):
                full = time.monotonic() - t_up
                break
            time.sleep(0.05)
        vals = probe.diagnostics(f"/{names[0]}/fusion_node", after=time.monotonic(), timeout=5) or {}
        result.update({"restart_s": round(t_up - t_kill, 2), "tour_s_at_kill": round(t_kill - t0, 1),
                       "full_accuracy_after_up_s": None if full is None else round(full, 2),
                       "restarted.dropped.peer.spoofed": vals.get("dropped.peer.spoofed", 0),
                       "restarted.provenance.earlier_incarnation": vals.get("provenance.earlier_incarnation", 0),
                       "restarted.beliefs": vals.get("beliefs", 0)})
    finally:
        for p in [*procs.values(), sim]:
            if p is not None:
                p.stop(timeout=5.0)
        probe.close()
        probe.node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps(result, indent=1))
    if args.json:
        from m2vae_fusion.files import write_json

        write_json(args.json, result, indent=1)
    return 0 if result.get("full_accuracy_after_up_s") is not None else 1


if __name__ == "__main__":
    sys.exit(main())
