"""Repeated stops of the node programs (issue 13, item 7): fusion_node and sim_world processes, all started at once
on one domain (the world publishing to the nodes: under load), each stopped with one of SIGINT, SIGTERM or SIGINT to
its process group (Ctrl-C in a terminal), the combinations test_ros_lifecycle.py does not cover included; every one
must exit 0 without a traceback. ``m2vae-fusion bench reliability`` runs 100 such stops (with the demo and the
recorder too)."""
import os
import signal
import time

import pytest

import rclpy  # noqa: E402,F401

from m2vae_fusion.paths import default_bundle_path  # noqa: E402
from m2vae_fusion.ros.harness import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
HOWS = ["SIGINT", "SIGTERM", "group-SIGINT"]
PLAN = [("fusion_node", h) for h in HOWS] + [("sim_world", h) for h in HOWS]


def test_repeated_stops_exit_zero_without_traceback(tmp_path):
    procs = []
    try:
        for i, (prog, how) in enumerate(PLAN):
            if prog == "fusion_node":
                # namespace agent0: the world below publishes to it
                p = NodeProcess("m2vae_fusion.ros.fusion_node", f"/agent{i % 2}",
                                {"model_dir": default_bundle_path(), "agent_id": f"stop{i}"}, str(tmp_path),
                                name=f"stop{i}_{prog}_{how}")
                ready = "fusing"
            else:
                p = NodeProcess("m2vae_fusion.ros.sim_world_node", "", {"num_agents": 2, "agent_prefix": "agent",
                                                                        "ground_truth_topic": f"/stop{i}/truth"},
                                str(tmp_path), name=f"stop{i}_{prog}_{how}")
                ready = "touring"
            procs.append((prog, how, p, ready))
        deadline = time.monotonic() + 90
        for prog, how, p, ready in procs:
            while ready not in p.log() and p.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready in p.log(), f"{p.name}:\n{p.log()[-3000:]}"
        time.sleep(1.0)  # the worlds publish, the nodes fuse
        for prog, how, p, _ in procs:
            if how == "group-SIGINT":
                os.killpg(p.pid, signal.SIGINT)
            else:
                p.proc.send_signal(getattr(signal, how))
        failures = []
        for prog, how, p, _ in procs:
            code = p.wait(20)
            log = p.log() if code is not None else p.dump_stack()
            if code != 0 or "Traceback" in log:
                failures.append(f"{p.name}: exit {code}\n{log[-2000:]}")
        assert not failures, "\n\n".join(failures)
    finally:
        for _, _, p, _ in procs:
            p.stop()
