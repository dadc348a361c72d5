"""The runtime and training benchmarks (m2vae_fusion.benchmarks) in their quick modes: they run end to end, write
the JSON schema they promise with positive finite numbers, compute the ratios from the parts, stop every child
process (also on Ctrl-C), and read a training run's metrics. Speed targets are reported by the benchmarks, never
asserted here."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from m2vae_fusion.benchmarks import runtime as rt
from m2vae_fusion.benchmarks import training as tr
from m2vae_fusion.benchmarks.common import stats_ms, table, target
from m2vae_fusion.benchmarks.training import epoch_times, extrapolate, read_metrics

KINDS = ["camera_320x240", "camera_640x480", "lidar", "reflectance", "peer"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from m2vae_fusion.training.export import export_untrained

    return export_untrained(str(tmp_path_factory.mktemp("bench_bundle") / "untrained"), seed=0)


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _procs_with(marker: str):
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_helpers():
    s = stats_ms([0.001, 0.002, 0.003])
    assert s["p50"] == pytest.approx(2.0) and s["max"] == pytest.approx(3.0) and s["n"] == 3
    assert stats_ms([]) is None
    assert target("x", 2.0, "<=", 1.5)["pass"] is False
    assert target("x", 1.0, "<=", 1.5)["pass"] is True
    assert target("x", None, "<=", 1.5)["pass"] is None
    assert "a" in table(["a", "b"], [[1, 2]]).splitlines()[0]
    assert epoch_times([1.0, 3.0, 6.0]) == [1.0, 2.0, 3.0]
    assert extrapolate([5.0, 2.0, 2.0], 10) == pytest.approx(5.0 + 9 * 2.0)


def test_camera_e2e_from_latent_stamps():
    """The headline's probe keeps LatentStamps, not messages (its GC stalled it otherwise): the camera end-to-end
    counts the first latent per stamp whose newest slot is the agent's own camera observation, within the window."""
    import threading
    import types

    from builtin_interfaces.msg import Time
    from m2vae_fusion_msgs.msg import LatentEmbedding

    msg = LatentEmbedding(modalities=["camera", "lidar"], modality_sources=["a", "b"],
                          modality_stamps=[Time(sec=10, nanosec=500), Time(sec=9)])
    msg.header.stamp = Time(sec=10, nanosec=500)
    rec = rt.latent_stamps(msg)
    assert rec == (10_000_000_500, ("camera", "lidar"), (10_000_000_500, 9_000_000_000), ("a", "b"))
    ns = rec.stamp_ns
    lidar_newest = rec._replace(stamp_ns=ns + 10**8, modality_stamps_ns=(ns, ns + 10**8))
    relayed = rec._replace(stamp_ns=ns + 2 * 10**8, modality_stamps_ns=(ns + 2 * 10**8, 0),
                           modality_sources=("b", "a"))
    probe = types.SimpleNamespace(cv=threading.Condition(), received={"/a/latent": [
        (1.002, rec), (1.003, rec),  # the same stamp twice: the first counts
        (1.2, lidar_newest), (1.3, relayed), (2.0, rec._replace(stamp_ns=ns + 5 * 10**9))]})  # out of the window
    # t_recv + off − stamp: the probe's monotonic clock is offset to wall time by off
    out = rt._camera_e2e(probe, ["a"], 10.0 - 1.0, 10.0, 11.0)
    assert out == pytest.approx([1.002 + 9.0 - ns * 1e-9])
    assert rt._e2e(probe, "/a/latent", 9.0, 10.0, 11.0)[0][0] == pytest.approx(ns * 1e-9)


def test_baseline_tree_runs_its_own_node(tmp_path):
    """--baseline-tree: the node must come from that tree. Started from this repository's root, `python -m` put the
    repository first on sys.path and the "baseline" silently ran this checkout's node; the bench now starts it in
    the tree and checks where the module resolves."""
    from m2vae_fusion.errors import UserError

    tree = tmp_path / "tree"
    (tree / "m2vae_fusion" / "ros").mkdir(parents=True)
    for f in ("m2vae_fusion/__init__.py", "m2vae_fusion/ros/__init__.py", "m2vae_fusion/ros/fusion_node.py"):
        (tree / f).write_text("")
    assert rt.check_baseline_tree(str(tree)) == str(tree / "m2vae_fusion" / "ros" / "fusion_node.py")
    package = os.path.dirname(os.path.dirname(os.path.abspath(rt.__file__)))
    shadowed = subprocess.run([sys.executable, "-c", "import m2vae_fusion.ros.fusion_node as m; print(m.__file__)"],
                              capture_output=True, text=True, cwd=os.path.dirname(package),
                              env={**os.environ, "PYTHONPATH": str(tree)}).stdout.strip()
    assert shadowed.startswith(package)  # what the old start did: the repository's node, not the tree's
    with pytest.raises(UserError, match="no m2vae_fusion/ros/fusion_node.py"):
        rt.check_baseline_tree(str(tmp_path))


def test_runtime_bad_arguments_exit_2(capsys):
    assert rt.main(["--quick", "--rates", "0,x"]) == 2
    assert "--rates" in capsys.readouterr().err
    assert rt.main(["--quick", "--rate-sizes", "100x100"]) == 2


def test_runtime_quick(tmp_path, bundle):
    out, logs = tmp_path / "runtime.json", tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "m2vae_fusion.benchmarks.runtime", "--quick", "--model-dir", bundle,
                           "--json", str(out), "--log-dir", str(logs)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout and ("PASS" in proc.stdout or "MISS" in proc.stdout)
    assert not _procs_with(str(logs)), "fusion nodes left running"
    res = json.loads(out.read_text())
    for key in ("machine", "config", "bundle", "headline", "inference", "latency", "sizes", "camera_rate", "scaling",
                "cpu_default_rates", "fastdds", "targets", "load_average_start", "load_average_end"):
        assert key in res, key
    hl = res["headline"]
    assert _positive(hl["reference_chain_ms"]["p50"])
    idle = hl["conditions"]["idle"]
    for name in ("echo", "node", "node_plain"):  # node_plain: accumulation, class evidence and novelty off
        r = idle[name]
        assert r["camera_sent"] > 0 and 1 <= r["camera_answered"] <= r["camera_sent"], (name, r)
        assert _positive(r["e2e_ms"]["p50"]) and r["e2e_ms"]["p99"] >= r["e2e_ms"]["p50"]
        assert _positive(r["cpu_percent_per_agent"]) and len(r["cpu_percent_agents"]) == 3
    assert idle["floor_p50_ms"] == pytest.approx(idle["echo"]["e2e_ms"]["p50"] + hl["reference_chain_ms"]["p50"])
    assert idle["node_p50_to_floor"] == pytest.approx(idle["node"]["e2e_ms"]["p50"] / idle["floor_p50_ms"])
    one_pair = idle["node"]["e2e_ms"]["p50"] / idle["node_plain"]["e2e_ms"]["p50"]
    assert idle["belief_overhead_pairs"] == [pytest.approx(one_pair)]  # quick: no reverse-order pair
    assert idle["belief_overhead_p50"] == pytest.approx(one_pair)
    assert "node_8_agents" not in idle  # quick: the 8-agent run is left out (n/a below)
    stops = hl["stops"]
    assert stops["n"] == 3 and stops["clean"] == 3, stops  # SIGINT, SIGTERM, SIGINT to the process group
    assert res["bundle"]["path"] == os.path.abspath(bundle)
    inf = res["inference"]
    assert inf["torch_weights"] == "bundle", inf["torch_note"]  # same architecture, the bundle's own weights
    assert max(inf["probe_parity"].values()) <= 1e-4
    for kind in KINDS:
        p = inf["paths"][kind]
        assert p["networks"][-1] == "head.onnx" and "m2vae_encoder_camera+lidar+reflectance.onnx" in p["networks"]
        for part in ("onnxruntime_ms", "torch_ms", "convert_preprocess_ms", "core_path_ms"):
            assert _positive(p[part]["p50"]) and p[part]["p99"] >= p[part]["p50"], (kind, part)
        assert p["onnxruntime_to_torch"] == pytest.approx(p["onnxruntime_ms"]["p50"] / p["torch_ms"]["p50"])
        r = res["latency"][kind]
        assert 1 <= r["fused"] <= r["sent"], (kind, r)
        assert _positive(r["node_ms"]["p50"]) and r["node_ms"]["p99"] >= r["node_ms"]["p50"]
        assert r["node_to_onnxruntime"]["p50"] == pytest.approx(r["node_ms"]["p50"] / p["onnxruntime_ms"]["p50"])
        assert r["onnxruntime_to_torch"]["p99"] == pytest.approx(p["onnxruntime_ms"]["p99"] / p["torch_ms"]["p99"])
        assert _positive(r["end_to_end_ms"]["p50"])
    assert len(inf["paths"]["peer"]["networks"]) == 5  # 3 decoders + subset encoder + head
    sz = res["sizes"]
    assert sz["image_640x480_rgb8"] > 640 * 480 * 3 > sz["image_320x240_rgb8"] > 320 * 240 * 3
    assert 0 < sz["latent_embedding"] < 2000 and sz["latent_modalities"] == ["camera", "lidar", "reflectance"]
    assert sz["raw_over_latent"]["image_640x480_rgb8"] == pytest.approx(
        sz["image_640x480_rgb8"] / sz["latent_embedding"])
    steps = res["camera_rate"]["sizes"]["640x480"]["steps"]
    assert [s["rate_hz"] for s in steps] == [30.0, 120.0]
    for s in steps:
        assert s["sent"] > 0 and s["processed"] >= 0 and s["sustained"] in (True, False, None)
        assert s["processed_hz"] == pytest.approx(s["processed"] / s["seconds"])
    phases = res["scaling"]["phases"]
    assert [p["agents"] for p in phases] == [1, 2]
    for p in phases:
        assert len(p["nodes"]) == p["agents"]
        for n in p["nodes"]:
            assert _positive(n["cpu_percent"]) and n["rss_mb"] > 30 and n["uss_mb"] > 0
            assert n["sources"]["camera"]["sent"] > 0 and n["sources"]["camera"]["processed"] > 0
        assert p["cpu_percent_nodes"] == pytest.approx(sum(n["cpu_percent"] for n in p["nodes"]))
        assert p["rss_mb_max"] == max(n["rss_mb"] for n in p["nodes"])
        assert _positive(p["p99_ms"])
    assert phases[1]["nodes"][0]["peer"]["received"] > 0  # the two agents exchanged latents
    assert res["cpu_default_rates"]["node_cpu_percent"] == phases[0]["cpu_percent_nodes"]
    case = res["fastdds"]["cases"]["640x480"]
    for label in ("with_profile", "without_profile"):
        assert _positive(case[label]["rtt_ms"]["p50"]) and case[label]["bytes"] == 640 * 480 * 3
    assert case["speedup_p50"] == pytest.approx(case["without_profile"]["rtt_ms"]["p50"]
                                                / case["with_profile"]["rtt_ms"]["p50"])
    names = {t["name"]: t for t in res["targets"]}
    assert len([n for n in names if n.startswith("node / onnxruntime")]) == 5
    t = names["640x480 rgb8 image / LatentEmbedding bytes"]
    assert t["value"] == pytest.approx(sz["raw_over_latent"]["image_640x480_rgb8"])
    assert t["pass"] is (t["value"] >= 1000)
    assert names["CPU per agent, idle (% of a core)"]["value"] == idle["node"]["cpu_percent_per_agent"]
    assert names["end-to-end p50 ÷ (echo + reference chain), 2 busy processes"]["pass"] is None  # not in quick
    assert names["8 agents: camera frames processed (%)"]["pass"] is None
    assert names["3 agents: no backlog (1 = yes)"]["pass"] is None  # not measured in quick mode: n/a, not a PASS
    assert all(t["pass"] in (True, False, None) for t in res["targets"])


def test_runtime_ctrl_c_stops_children(tmp_path, bundle):
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "m2vae_fusion.benchmarks.runtime", "--quick", "--model-dir", bundle,
                             "--skip", "inference", "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _procs_with(str(logs)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _procs_with(str(logs)), "no fusion node was started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        try:  # read the pipe while waiting: a full pipe would block the exit
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
            pytest.fail(f"bench runtime still running 90 s after SIGINT; its output:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode != 0
    deadline = time.monotonic() + 15
    while _procs_with(str(logs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _procs_with(str(logs)), "fusion nodes left running after Ctrl-C"


def test_training_quick_and_run_metrics(tmp_path):
    out, keep = tmp_path / "training.json", tmp_path / "keep"
    proc = subprocess.run([sys.executable, "-m", "m2vae_fusion.benchmarks.training", "--quick", "--samples", "24",
                           "--json", str(out), "--keep", str(keep)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "M2VAE_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["source"] == "measured"
    gen = res["data"]["dataset_command"]
    assert gen["samples"] == 24 and gen["samples_per_s"] == pytest.approx(24 / gen["seconds"])
    assert _positive(res["data"]["generator_one_process"]["samples_per_s"])
    st = res["stages"]
    assert list(st) == ["data_load", "betavae_camera", "betavae_lidar", "betavae_reflectance", "betavae_features",
                        "m2vae", "head", "export"]
    for name in ("betavae_camera", "betavae_lidar", "betavae_reflectance", "m2vae", "head"):
        r = st[name]
        assert r["epochs_measured"] == 1 and _positive(r["seconds_per_epoch"])
        # one measured epoch: the default epochs all cost like it, plus the stage's fixed part
        assert r["extrapolated_seconds"] == pytest.approx(r["seconds_per_epoch"] * r["default_epochs"]
                                                          + r["fixed_seconds"])
        assert r["extrapolated_seconds_target"] > r["extrapolated_seconds"]  # 20000 samples > 24
    from m2vae_fusion.training.config import epochs_for, load_config

    default = load_config()  # the extrapolation is to the default configuration's epochs
    assert st["betavae_camera"]["default_epochs"] == epochs_for(default, "camera")
    assert st["m2vae"]["default_epochs"] == default["m2vae"]["epochs"]
    assert _positive(st["export"]["seconds_measured"])
    assert st["export"]["extrapolated_seconds_target"] == st["export"]["extrapolated_seconds"]
    assert res["totals"]["seconds_measured"] == pytest.approx(sum(r["seconds_measured"] for r in st.values()))
    assert os.path.isfile(keep / "run" / "bundle" / "manifest.json")

    # the same run read back from its metrics.jsonl (no training, no extrapolation)
    out2 = tmp_path / "from_run.json"
    assert tr.main(["--run", str(keep / "run"), "--no-export", "--json", str(out2)]) == 0
    back = json.loads(out2.read_text())
    assert back["source"] == "run_metrics" and back["data"]["train_samples"] == res["data"]["train_samples"]
    metrics = read_metrics(str(keep / "run" / "metrics.jsonl"))
    assert back["stages"]["m2vae"]["seconds_measured"] == pytest.approx(metrics["m2vae"][-1])
    assert back["stages"]["betavae_camera"]["seconds_per_epoch"] == pytest.approx(metrics["betavae/camera"][0])
    assert "extrapolated_seconds" not in back["stages"]["m2vae"]


def test_training_bad_arguments(tmp_path, capsys):
    assert tr.main(["--data", str(tmp_path)]) == 2
    assert "metadata.json" in capsys.readouterr().err
    assert tr.main(["--run", str(tmp_path)]) == 2


def test_belief_overhead_is_the_geometric_mean_of_the_abba_pairs():
    from m2vae_fusion.benchmarks.runtime import belief_overhead

    def run(p50):
        return {"e2e_ms": {"p50": p50} if p50 is not None else None}

    c = {"node": run(6.0), "node_plain": run(4.0)}
    assert belief_overhead(c) == ([pytest.approx(1.5)], pytest.approx(1.5))
    c.update(node_plain_2=run(5.0), node_2=run(4.0))  # load fell during the condition: the pairs disagree
    pairs, value = belief_overhead(c)
    assert pairs == [pytest.approx(1.5), pytest.approx(0.8)] and value == pytest.approx((1.5 * 0.8) ** 0.5)
    c["node_2"] = run(None)  # a run without answers gives no figure
    assert belief_overhead(c)[1] is None
