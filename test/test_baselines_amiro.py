"""``bench baselines --sets amiro`` (issue 11 part b) end to end on a tiny synthetic data set: shared β-VAEs, two
objectives, one seed, every figure present and in range, the bundles' objective recorded, the table and the plot;
bad options are one-line errors."""
import json
import os

import numpy as np
import pytest

from m2vae_fusion.cli import main
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS
from m2vae_fusion.data import shards
from m2vae_fusion.training.synthetic import make_arrays

TINY = ["betavae.epochs={camera: 1, lidar: 1, reflectance: 2}", "betavae.min_steps=0", "betavae.batch_size=32",
        "betavae.camera_channels=[4, 4, 4, 4]", "betavae.lidar_channels=[4, 4, 4]", "betavae.trunk_hidden=16",
        "betavae.reflectance_hidden=[16, 16]", "m2vae.batch_size=32", "m2vae.hidden=[16, 8]",
        "m2vae.fusion_hidden=8", "head.epochs=3", "head.hidden=8", "latent_dim=4"]


def _data(path):
    sensors = {k: dict(v) for k, v in DEFAULT_CONFIGS.items()}
    parts = [("train", 0, make_arrays(64, 0)), ("val", 0, make_arrays(32, 1)), ("test", 0, make_arrays(40, 2))]
    shards.write_dataset(str(path), parts, source="synthetic", seed=0, sensors=sensors)
    return str(path)


def test_bench_baselines_amiro_tiny(tmp_path, capsys):
    os.environ["M2VAE_NO_PROGRESS"] = "1"
    data = _data(tmp_path / "data")
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", "baselines", "--sets", "amiro", "--objectives", "m2vae,mopoe", "--seeds", "0",
            "--amiro-data", data, "--amiro-runs", str(tmp_path / "runs"), "--amiro-steps", "20",
            "--amiro-latency-n", "12", "--json", str(js), "--plot", str(png)]
    for o in TINY:
        argv += ["--amiro-set", o]
    assert main(argv) == 0
    res = json.loads(js.read_text())["amiro"]
    assert [(r["objective"], r["seed"]) for r in res["runs"]] == [("m2vae", 0), ("mopoe", 0)]
    # one β-VAE set for every row: trained once, its encoders in every bundle
    assert os.path.isdir(tmp_path / "runs" / "betavae" / "checkpoints")
    shas = set()
    for r in res["runs"]:
        man = json.loads(open(os.path.join(r["bundle"], "manifest.json")).read())
        assert man["objective"] == r["objective"]
        shas.add(man["files"][man["networks"]["betavae_encoder"]["camera"]])
        assert set(r["head"]) == {"camera", "lidar", "reflectance", "camera+lidar", "camera+reflectance",
                                  "lidar+reflectance", "camera+lidar+reflectance"}
        assert all(0.0 <= v <= 1.0 for v in r["head"].values())
        assert len(r["coherence"]) == 7 * 3 and all(0.0 <= v <= 1.0 for v in r["coherence"].values())
        assert set(r["in_place"]["random"]) == {"3", "10", "50"}
        assert all(np.isfinite(v) for v in r["elbo"].values())
        assert r["latency"]["observe_ms"]["n"] == 12 and r["latency"]["observe_ms"]["p50"] > 0
        assert r["train_wall_s"] > 0
    assert len(shas) == 1
    # the synthetic camera sees colour: real features classify it far above chance (the coherence ceiling)
    assert res["coherence_ceiling"]["camera"] > 0.6
    s = {x["objective"]: x for x in res["summary"]}
    assert s["mopoe"]["meta"]["n"] == 1 and s["m2vae"]["head/camera+lidar+reflectance"]["n"] == 1
    out = capsys.readouterr().out
    assert "cross-modal coherence" in out and "ELBO C" in out and "mopoe" in out
    assert png.with_name("b_amiro.png").stat().st_size > 1000


def test_bench_baselines_amiro_bad_options(tmp_path, capsys):
    base = ["bench", "baselines", "--sets", "amiro", "--amiro-data", str(tmp_path / "d"), "--amiro-runs",
            str(tmp_path / "r")]
    assert main(base + ["--amiro-set", "m2vae.hidden=-3"]) == 2
    assert main(base + ["--amiro-steps", "0"]) == 2
    assert main(base + ["--amiro-samples", "10"]) == 2
    assert "--amiro-samples" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d")


def test_demo_agents_on_the_shipped_mopoe_bundle_exchange_latents(tmp_path):
    """Three single-sensor fusion nodes on ``models/amiro_mopoe`` (a MoPoE bundle, unchanged node and messages):
    short tour of 1 object; every agent ends with the same multi-sensor evidence, exchanged between the agents."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "d.json"
    cmd = [sys.executable, "-m", "m2vae_fusion", "demo", "--model-dir", os.path.join(repo, "models", "amiro_mopoe"),
           "--objects", "1", "--inspect-duration", "2.5", "--transit-duration", "0.5", "--log-dir",
           str(tmp_path / "logs"), "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["exchange"] is True and set(res["agents"]) == {"agent0", "agent1", "agent2"}
    assert len(res["targets"]) == 1
    for target in res["targets"].values():
        cells = target["agents"]
        # exchange: every agent ends with the same slots, built by more than one agent (all three on a quiet
        # machine; under load a 2.5 s inspection can pass without one sensor's observation of the object)
        assert len({tuple(c["modalities"]) for c in cells.values()}) == 1, cells
        for agent, cell in cells.items():
            assert len(cell["modalities"]) >= 2 and set(cell["contributors"]) - {agent}, (agent, cell)
            assert sorted(cell["contributors"]) == sorted(cells["agent0"]["contributors"])
            assert 0.0 < cell["probability"] <= 1.0
