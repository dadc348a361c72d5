"""The latency benchmark of the fusion node (m2vae_fusion.benchmarks.latency) runs end to end (short phases) and
reports every input; it stops with a one-line error (exit status 2) naming a directory without a bundle."""
import json
import subprocess
import sys

import pytest

import rclpy  # noqa: E402,F401
import m2vae_fusion_msgs.msg  # noqa: E402,F401

pytestmark = pytest.mark.ros


def test_latency_bench_reports_every_input(tmp_path):
    from linear_bundle import make_linear_bundle

    bundle = make_linear_bundle(str(tmp_path / "bundle"), 4, 4, seed=5)
    out = tmp_path / "latency.json"
    res = subprocess.run([sys.executable, "-m", "m2vae_fusion.benchmarks.latency", "--model-dir", bundle,
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


def test_latency_bench_without_a_bundle_names_the_directory(tmp_path):
    res = subprocess.run([sys.executable, "-m", "m2vae_fusion.benchmarks.latency", "--model-dir", str(tmp_path),
                          "--seconds", "0.1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(tmp_path) in res.stderr and "Traceback" not in res.stderr
