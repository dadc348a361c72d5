"""The latency benchmark of the fusion node (m2vae_fusion.benchmarks.latency) runs end to end (short phases) and
reports every input with torch (and the other training/simulator packages) impossible to import in its process; it
stops with a one-line error (exit status 2) naming a directory without a bundle."""
import json
import subprocess
import sys

import pytest

import rclpy  # noqa: E402,F401
import m2vae_fusion_msgs.msg  # noqa: E402,F401

pytestmark = pytest.mark.ros
#: runs the benchmark module as __main__ with the training, simulator and plotting packages blocked
NO_TORCH = (
    "import importlib.abc, runpy, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'pybullet', 'matplotlib', 'sklearn'):\n"
    "            raise ImportError(name + ' is blocked')\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv[0] = 'latency'\n"
    "runpy.run_module('m2vae_fusion.benchmarks.latency', run_name='__main__')\n")


def test_latency_bench_reports_every_input(tmp_path):
    from linear_bundle import make_linear_bundle

    bundle = make_linear_bundle(str(tmp_path / "bundle"), 4, 4, seed=5)
    out = tmp_path / "latency.json"
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "--model-dir", bundle,
                          "--seconds", "0.5", "--camera-size", "64x48", "--json", str(out),
                          "--log-dir", str(tmp_path / "logs")], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["bundle"]["origin"] == "given" and data["camera_size"] == [64, 48]
    assert set(data["inputs"]) == {"camera", "lidar", "reflectance", "cloud", "peer"}
    for name, r in data["inputs"].items():
        assert r["fused"] >= 1, (name, r)
        assert r["node_ms"]["p50"] > 0 and r["node_ms"]["p99"] >= r["node_ms"]["p50"], (name, r)
    assert "camera" in res.stdout and "peer" in res.stdout
    # the blocker is real: the same prefix refuses torch
    res = subprocess.run([sys.executable, "-c", NO_TORCH.replace("runpy.run_module", "import torch; runpy.run_module")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "torch is blocked" in res.stderr


def test_latency_bench_without_a_bundle_names_the_directory(tmp_path):
    res = subprocess.run([sys.executable, "-m", "m2vae_fusion.benchmarks.latency", "--model-dir", str(tmp_path),
                          "--seconds", "0.1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(tmp_path) in res.stderr and "Traceback" not in res.stderr
