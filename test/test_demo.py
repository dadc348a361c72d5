"""The demo end to end as a user runs it (a subprocess, real DDS), shortened: 2 objects, short inspections."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from linear_bundle import make_linear_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    # the node's real preprocessing configs with a linear bundle: fast, and the slots it reports are exact
    return make_linear_bundle(str(tmp_path_factory.mktemp("demo_bundle")), 4, 4, seed=3)


def demo(args, tmp_path, **kw):
    cmd = [sys.executable, "-m", "m2vae_fusion", "demo", "--objects", "red_cylinder_matte,green_cube_shiny",
           "--inspect-duration", "2.5", "--transit-duration", "0.5", "--log-dir", str(tmp_path / "logs"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150, **kw)


def leftover(log_dir):
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(log_dir) in part for part in (p.info["cmdline"] or [])):
            mine.append(p)
    return mine


def test_exchange_fills_every_slot_and_cleans_up(bundle, tmp_path):
    out = tmp_path / "d.json"
    r = demo(["--model-dir", bundle, "--json", str(out), "--plot", str(tmp_path / "d.png")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["agents"]) == {"agent0", "agent1", "agent2"} and res["exchange"] is True
    assert set(res["targets"]) == {"object_0", "object_1"}
    assert res["targets"]["object_1"]["true_class"] == "green_cube_shiny"
    for target in res["targets"].values():
        for agent, cell in target["agents"].items():
            # single-sensor agents end with the evidence of all three sensors about every object
            assert cell["modalities"] == ["camera", "lidar", "reflectance"], (agent, cell)
            assert sorted(cell["contributors"]) == ["agent0", "agent1", "agent2"]
    assert "accuracy" in r.stdout and (tmp_path / "d.png").stat().st_size > 10_000
    # each node's final counters: its own sensor's observations; this bundle does not crop, so no crop fallback
    pre = res["preprocessing"]
    for agent, sensor in (("agent0", "camera"), ("agent1", "lidar"), ("agent2", "reflectance")):
        assert pre[agent].get(f"processed.{sensor}", 0) > 10 and pre[agent].get("received.target", 0) >= 2, pre
    assert not [k for v in pre.values() for k in v if k.startswith("crop_fallback")], pre
    assert leftover(tmp_path / "logs") == []


def test_no_exchange_keeps_agents_apart(bundle, tmp_path):
    out = tmp_path / "d.json"
    r = demo(["--model-dir", bundle, "--json", str(out), "--no-exchange", "--agents", "camera,lidar"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["exchange"] is False
    for target in res["targets"].values():
        assert target["agents"]["agent0"]["modalities"] == ["camera"]
        assert target["agents"]["agent1"]["modalities"] == ["lidar"]


def test_sigterm_stops_every_child(bundle, tmp_path):
    cmd = [sys.executable, "-m", "m2vae_fusion", "demo", "--model-dir", bundle, "--log-dir", str(tmp_path / "logs"),
           "--duration", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(leftover(tmp_path / "logs")) < 4 and time.monotonic() < deadline:  # 3 fusion nodes + the world
            time.sleep(0.2)
        assert len(leftover(tmp_path / "logs")) == 4
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out[-3000:]  # a requested stop (issue 13): exit 0, no traceback
        assert "stopped by a signal" in out and "Traceback" not in out, out[-3000:]
        time.sleep(0.5)
        assert leftover(tmp_path / "logs") == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in leftover(tmp_path / "logs"):
            p.kill()


def test_bad_arguments_exit_2(tmp_path):
    for args, text in [(["--agents", "sonar"], "sonar"), (["--objects", "blue_cone_matte"], "blue_cone_matte"),
                       (["--model-dir", str(tmp_path / "none")], "does not exist"), (["--objects", "0"], "1..64")]:
        r = demo(args, tmp_path)
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_demo_domain_honours_ros_domain_id(monkeypatch):
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.ros.demo import isolate_dds

    monkeypatch.setenv("ROS_DOMAIN_ID", "17")
    assert isolate_dds() == 17 and os.environ["ROS_DOMAIN_ID"] == "17"
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    for bad in ("abc", "-1", "233"):
        monkeypatch.setenv("ROS_DOMAIN_ID", bad)
        with pytest.raises(UserError, match="ROS_DOMAIN_ID"):
            isolate_dds()
    monkeypatch.delenv("ROS_DOMAIN_ID")
    picked = isolate_dds()
    assert 101 <= picked <= 200 and os.environ["ROS_DOMAIN_ID"] == str(picked)
    assert isolate_dds(42) == 42
