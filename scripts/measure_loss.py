"""One side of the packet-loss measurement of the shared latent topic (issue 13, item 4; run by measure_loss.sh).

Side ``a`` runs fusion node ``la`` (LiDAR), side ``b`` runs ``lb`` (reflectance), each in its own network namespace,
each fed by this process's scans at 10 Hz about the same target. They exchange latents over the veth link that
measure_loss.sh makes lossy with nftables. Side ``a`` prints ``la``'s peer-evidence age statistics from /diagnostics
(``peer_evidence.age_s.*``: how stale ``la``'s copy of ``lb``'s evidence about the target both observe is while
``lb`` keeps observing it, m2vae_fusion.core.agent) as JSON at the end.
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=("a", "b"), required=True)
    ap.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args(argv)
    import rclpy
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.paths import default_bundle_path
    from m2vae_fusion.ros.harness import SENSOR_QOS, NodeProcess, Probe

    model_dir = default_bundle_path()
    bundle = Bundle.load(model_dir, check_sums=False)
    name, modality = ("la", "lidar") if args.side == "a" else ("lb", "reflectance")
    rclpy.init()
    probe = Probe(f"loss_{name}")
    logs = tempfile.mkdtemp(prefix=f"m2vae_loss_{name}_")
    proc = NodeProcess("m2vae_fusion.ros.fusion_node", f"/{name}",
                       {"agent_id": name, "model_dir": model_dir, "modalities": [modality],
                        "peer_qos_reliability": args.qos, "diagnostics_period": 0.5, "max_latent_age": -1.0},
                       logs)
    rng = np.random.default_rng(0)
    try:
        assert probe.diagnostics(f"/{name}/fusion_node", timeout=60) is not None, proc.log()
        probe.publish(f"/{name}/target_of_interest", conv.target_msg("obj", probe.now_ns() - 10**9, "map"))
        t_end = time.monotonic() + args.seconds
        cfg = bundle.input_config(modality)
        while time.monotonic() < t_end:
            stamp = probe.now_ns()
            if modality == "lidar":
                msg = conv.ranges_to_scan(rng.uniform(0.3, 2.5, int(cfg["beams"])).astype(np.float32), cfg,
                                          stamp_ns=stamp)
            else:
                k = int(cfg["beams"])
                msg = conv.ranges_to_scan(rng.uniform(0.05, 0.5, k), {"range_max": 0.6}, stamp_ns=stamp,
                                          intensities=rng.uniform(0, 1, k))
            probe.publish(f"/{name}/{'scan' if modality == 'lidar' else 'reflectance'}", msg, SENSOR_QOS)
            if int(time.monotonic() * 10) % 10 == 0:
                probe.publish(f"/{name}/target_of_interest", conv.target_msg("obj", stamp - 10**9, "map"))
            time.sleep(0.1)
        vals = probe.diagnostics(f"/{name}/fusion_node", after=time.monotonic(), timeout=5) or {}
        out = {k: v for k, v in vals.items() if k.startswith(("peer_evidence", "processed.peer", "received.peer",
                                                               "dropped.peer", "shared."))}
        out.update({"side": args.side, "qos": args.qos, "seconds": args.seconds})
        print(json.dumps(out), flush=True)
    finally:
        proc.stop()
        probe.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
