"""Training pipeline end to end on a tiny synthetic data set (seconds), config validation, bad input."""
import copy
import json
import math
import os
import shutil

import numpy as np
import pytest

from m2vae_fusion.cli import main
from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS
from m2vae_fusion.data import shards
from m2vae_fusion.training import config as cfgmod
from m2vae_fusion.errors import UserError
from m2vae_fusion.training.synthetic import make_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """
seed: 3
betavae:
  epochs: {camera: 1, lidar: 2, reflectance: 3}
  min_steps: 0
  batch_size: 32
  camera_channels: [4, 4, 4, 4]
  lidar_channels: [4, 4, 4]
  trunk_hidden: 16
  reflectance_hidden: [16, 16]
m2vae:
  epochs: 3
  min_steps: 0
  batch_size: 32
  hidden: [16, 8]
  fusion_hidden: 8
head:
  epochs: 3
  hidden: 8
"""


def write_synthetic(path, n_train=96, n_eval=32, missing_rate=0.0, seed=0):
    sensors = {k: dict(v) for k, v in DEFAULT_CONFIGS.items()}
    parts = [("train", 0, make_arrays(n_train, seed, missing_rate=missing_rate)),
             ("val", 0, make_arrays(n_eval, seed + 1)), ("test", 0, make_arrays(n_eval, seed + 2))]
    shards.write_dataset(str(path), parts, source="synthetic", seed=seed, sensors=sensors)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    data = write_synthetic(base / "data", missing_rate=0.2)
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY)
    out, runs = str(base / "models" / "tiny"), str(base / "runs" / "tiny")
    os.environ["M2VAE_NO_PROGRESS"] = "1"
    rc = main(["train", "--data", data, "--out", out, "--config", str(cfg), "--runs", runs])
    assert rc == 0
    return {"data": data, "out": out, "runs": runs, "cfg": str(cfg), "base": base}


def test_train_writes_bundle_checkpoints_and_metrics(trained):
    out, runs = trained["out"], trained["runs"]
    assert main(["verify", out]) == 0
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    assert man["training"]["config"]["seed"] == 3
    assert man["training"]["config"]["m2vae"]["alpha_reenc"] == cfgmod.DEFAULTS["m2vae"]["alpha_reenc"]
    assert man["training"]["dataset"] == {"seed": 0, "source": "synthetic", "samples": 160}
    assert "m2vae/val_loss" in man["training"]["metrics"]
    assert man["networks"]["head"] == "head.onnx" and len(man["class_names"]) == 8
    for name in ("betavae_camera", "betavae_lidar", "betavae_reflectance", "m2vae", "head"):
        assert os.path.isfile(os.path.join(runs, "checkpoints", f"{name}.pt"))
    with open(os.path.join(runs, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert sum(r["stage"] == "betavae" and r["modality"] == "lidar" for r in recs) == 2
    assert sum(r["stage"] == "m2vae" for r in recs) == 3
    assert all(np.isfinite(r["train_loss"]) for r in recs if "train_loss" in r)
    # head temperature folded into head.onnx: probabilities sum to one
    from m2vae_fusion.training.export import run_onnx
    p = run_onnx(os.path.join(out, "head.onnx"), {"z": np.zeros((3, man["latent_dim"]), np.float32)})["probabilities"]
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    assert total < 20e6


def test_resume_and_single_stage(trained, capsys):
    """--resume skips finished epochs (no new metrics lines); --stage export alone re-exports the same networks."""
    runs, out = trained["runs"], trained["out"]
    with open(os.path.join(runs, "metrics.jsonl")) as f:
        before = f.read().count("\n")
    rc = main(["train", "--data", trained["data"], "--out", out, "--config", trained["cfg"], "--runs", runs,
               "--stage", "m2vae", "--resume"])
    assert rc == 0
    with open(os.path.join(runs, "metrics.jsonl")) as f:
        assert f.read().count("\n") == before
    with open(os.path.join(out, "manifest.json")) as f:
        mid = json.load(f)["model_id"]
    again = str(trained["base"] / "again")
    assert main(["export", "--run", runs, "--out", again]) == 0
    with open(os.path.join(again, "manifest.json")) as f:
        assert json.load(f)["model_id"] == mid  # same weights, same probes → same files


def test_eval_end_to_end(trained, tmp_path, capsys):
    js = tmp_path / "eval.json"
    rc = main(["eval", trained["out"], "--data", trained["data"], "--json", str(js), "--ablation", trained["out"],
               "--reencode-steps", "3", "--elbo-samples", "2"])
    assert rc == 0
    res = json.loads(js.read_text())
    for key in ("meta_sensor", "subset_accuracy", "in_place", "z_diff", "elbo"):
        assert key in res
    assert set(res["meta_sensor"]) >= {"raw", "m2vae"}
    assert set(res["subset_accuracy"]) == {"camera", "lidar", "reflectance", "camera+lidar", "camera+reflectance",
                                           "lidar+reflectance", "camera+lidar+reflectance"}
    assert len(res["in_place"]["bundle"]["per_order"]) == 6
    assert res["in_place"]["ablation"]["mean"] == pytest.approx(res["in_place"]["bundle"]["mean"])
    for v in res["subset_accuracy"].values():
        assert 0 <= v <= 1
    z = res["z_diff"]["camera+lidar"]
    assert z["after_1"]["median"] >= 0 and z["after_3"]["p95"] >= z["after_3"]["median"]
    assert all(np.isfinite(v) and v < 0 for v in res["elbo"].values())
    out = capsys.readouterr().out
    assert "in-place" in out and "[v2]" in out
    # protocol v2 beside it: chains per mode and K, sampled and with means; information measures per subset
    v2 = res["v2"]
    for key in ("bundle", "ablation"):
        r = v2[key]
        for name in ("chains", "chains_mean"):
            for mode in ("random", "one_keeps"):
                assert set(r[name][mode]) == {"3", "10", "50"}
                for c in r[name][mode].values():
                    assert 0 <= c["in_place"] <= 1 and 0 <= c["direct"] <= 1
                    assert c["gap"] == pytest.approx(c["in_place"] - c["direct"])  # every chain saw every sensor
        assert len(r["chains"]["random"]["50"]["z_step_median"]) == 49
        assert all(0 <= acc <= 1 for row in r["per_sensor_extratrees"].values() for acc in row.values())
        assert set(r["per_sensor_extratrees"]["camera"]) == {"colour", "shape", "material"}
        info = r["information"]["per_subset"]
        assert set(info) == set(res["subset_accuracy"])
        assert all(0 <= v["within_class_share"] <= 1.0001 and set(v["r2"]) == {"camera", "lidar", "reflectance"}
                   for v in info.values())
    # means, no sampling: a chain of 3 in one order per object equals the paper protocol's in-place fusion
    assert v2["bundle"]["chains_mean"]["random"]["3"]["objects"] == res["test_samples"]


def test_eval_v2_chain_schedules_and_plots(trained, tmp_path):
    from m2vae_fusion.training.evaluate import chain_schedule, object_groups, plot_v2

    rng = np.random.default_rng(0)
    mods = ["camera", "lidar", "reflectance"]
    s = chain_schedule(10, mods, "random", rng)
    assert sorted(s[:3]) == sorted(mods) and sorted(s[3:6]) == sorted(mods) and len(s) == 10
    k = chain_schedule(50, mods, "one_keeps", rng)
    assert sorted(k[:3]) == sorted(mods) and len(set(k[3:])) == 1 and len(k) == 50
    groups = object_groups(np.array([5, 5, 7, -1, 7, 5]))
    assert sorted(map(list, groups)) == [[0, 1, 5], [2, 4], [3]]
    paths = plot_v2(trained["out"], trained["data"], str(tmp_path / "fig"), steps=3)
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_train_ablation_reuses_betavae(trained, tmp_path):
    out, runs = str(tmp_path / "noreenc"), str(tmp_path / "runs")
    rc = main(["train", "--out", out, "--config", trained["cfg"], "--runs", runs, "--set", "m2vae.alpha_reenc=0.3",
               "--init-betavae", trained["runs"]])
    assert rc == 0
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    assert man["training"]["config"]["m2vae"]["alpha_reenc"] == 0.3  # the default is 0
    with open(os.path.join(trained["out"], "manifest.json")) as f:
        ref = json.load(f)
    # identical β-VAEs, different M2VAE
    assert man["files"]["betavae_camera_encoder.onnx"] == ref["files"]["betavae_camera_encoder.onnx"]
    assert man["files"]["m2vae_encoder_camera.onnx"] != ref["files"]["m2vae_encoder_camera.onnx"]


# ------------------------------------------------------------------------------------------------ configuration

def test_default_config_file_matches_builtin_defaults():
    assert cfgmod.load_config(os.path.join(REPO, "config", "train.yaml")) == cfgmod.load_config(None)
    c = cfgmod.load_config(None)
    assert c["latent_dim"] == 32 and c["feature_dim"] == 10 and c["m2vae"]["alpha_reenc"] == 0
    assert c["betavae"]["aux_weight"] == 0 and c["betavae"]["standardize"] is True


@pytest.mark.parametrize("text, key", [
    ("m2vae:\n  alpah: 0.1\n", "m2vae.alpah"),
    ("latent_size: 4\n", "latent_size"),
    ("modalities: [camera, sonar]\n", "modalities"),
    ("latent_dim: 0\n", "latent_dim"),
    ("m2vae:\n  batch_size: -5\n", "m2vae.batch_size"),
    ("betavae:\n  epochs: {camera: 1, lidar: 1, radar: 1}\n", "betavae.epochs.radar"),
    ("betavae:\n  camera_channels: [8, 0]\n", "betavae.camera_channels"),
    ("m2vae:\n  lr: 0\n", "m2vae.lr"),
    ("head:\n  epochs: 2.5\n", "head.epochs"),
    ("betavae:\n  beta_norm: {camera: -0.1, lidar: 0.01, reflectance: 0.01}\n", "betavae.beta_norm.camera"),
    ("betavae:\n  beta_norm: {camera: 0.01, radar: 0.01}\n", "betavae.beta_norm.radar"),
])
def test_bad_config_names_the_key(tmp_path, capsys, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(p),
               "--runs", str(tmp_path / "r")])
    assert rc == 2
    assert repr(key) in capsys.readouterr().err


def test_per_modality_beta_norm(tmp_path):
    """``betavae.beta_norm`` is one number for every modality or a per-modality mapping."""
    p = tmp_path / "b.yaml"
    p.write_text("betavae:\n  beta_norm: {camera: 0.002, lidar: 0.01, reflectance: 0.02}\n")
    c = cfgmod.load_config(str(p))
    assert [cfgmod.beta_norm_for(c, m) for m in ("camera", "lidar", "reflectance")] == [0.002, 0.01, 0.02]
    p.write_text("betavae:\n  beta_norm: 0.005\n")
    assert cfgmod.beta_norm_for(cfgmod.load_config(str(p)), "lidar") == 0.005


def test_set_one_modalitys_epochs_keeps_the_others():
    """``--set betavae.epochs.camera=4`` (the README's recipe for the easy-world bundles) changes the camera's epochs
    only; after a single number for every modality, one modality's value changes that modality only."""
    c = cfgmod.load_config(None, ["betavae.epochs.camera=4"])
    assert c["betavae"]["epochs"] == dict(cfgmod.DEFAULTS["betavae"]["epochs"], camera=4)
    # one number, then one modality's: the others keep the number
    c = cfgmod.load_config(None, ["betavae.epochs=5", "betavae.epochs.camera=4"])
    assert c["betavae"]["epochs"] == {"camera": 4, "lidar": 5, "reflectance": 5}


def test_default_beta_norm_is_per_modality_and_the_easy_recipe_restores_one_number():
    """The default β_norm is smaller for the LiDAR and the reflectance than for the camera (their attributes are
    small signals: README "Unsupervised β-VAEs that keep the attribute"); one modality's value can be set alone, and
    the easy-world recipe's ``--set betavae.beta_norm=0.01`` gives every modality 0.01 again."""
    d = cfgmod.load_config(None)
    b = {m: cfgmod.beta_norm_for(d, m) for m in ("camera", "lidar", "reflectance")}
    assert b["lidar"] < b["camera"] and b["reflectance"] < b["camera"]
    one = cfgmod.load_config(None, ["betavae.beta_norm.lidar=0.01"])
    assert [cfgmod.beta_norm_for(one, m) for m in b] == [b["camera"], 0.01, b["reflectance"]]
    easy = cfgmod.load_config(None, ["betavae.beta_norm=0.01", "betavae.epochs.camera=4",
                                     "betavae.epochs.reflectance=20"])
    assert [cfgmod.beta_norm_for(easy, m) for m in b] == [0.01] * 3
    assert easy["betavae"]["epochs"] == {"camera": 4, "lidar": 120, "reflectance": 20}


def test_bad_set_override_and_missing_config(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--set", "m2vae.alpha=-1"]) == 2
    assert "'m2vae.alpha'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--config",
                 str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("m2vae: [unclosed\n")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--config",
                 str(tmp_path / "broken.yaml")]) == 2
    assert "broken.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad data

def test_missing_and_corrupt_data(tmp_path, capsys):
    out = ["--out", str(tmp_path / "m"), "--runs", str(tmp_path / "r")]
    assert main(["train", "--data", str(tmp_path / "nothing")] + out) == 2
    assert "nothing" in capsys.readouterr().err
    data = write_synthetic(tmp_path / "d", n_train=8, n_eval=4)
    os.remove(os.path.join(data, "metadata.json"))  # incomplete data set
    assert main(["train", "--data", data] + out) == 2
    assert "metadata.json" in capsys.readouterr().err
    data = write_synthetic(tmp_path / "d2", n_train=8, n_eval=4)
    with open(os.path.join(data, "train-00000.npz"), "r+b") as f:
        f.seek(200)
        f.write(b"garbage")
    assert main(["train", "--data", data] + out) == 2
    assert "train-00000.npz" in capsys.readouterr().err
    os.remove(os.path.join(data, "val-00000.npz"))
    assert main(["eval", str(tmp_path / "m"), "--data", data, "--json", str(tmp_path / "e.json")]) == 2


def test_eval_rejects_tampered_bundle(trained, tmp_path, capsys):
    bad = str(tmp_path / "bad")
    shutil.copytree(trained["out"], bad)
    with open(os.path.join(bad, "head.onnx"), "ab") as f:
        f.write(b"\0")
    rc = main(["eval", bad, "--data", trained["data"], "--json", str(tmp_path / "e.json")])
    assert rc == 2
    assert "head.onnx" in capsys.readouterr().err


def test_train_needs_data_for_betavae(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "m"), "--runs", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    # later stage without the earlier one
    assert main(["train", "--out", str(tmp_path / "m"), "--runs", str(tmp_path / "r"), "--stage", "m2vae"]) == 2
    assert "features.npz" in capsys.readouterr().err


def test_lidar_object_trunk_is_object_centred():
    """The LiDAR encoder looks at the nearest return in front: the same object at another bearing (the scan shifted by
    whole beams) gives the same features; a flat face and an arc of the same width do not."""
    import torch

    from m2vae_fusion.training.networks import BetaVAE

    cfg = DEFAULT_CONFIGS["lidar"]
    b = int(cfg["beams"])
    theta = cfg["angle_min"] + cfg["angle_increment"] * np.arange(b)
    torch.manual_seed(0)
    vae = BetaVAE("lidar", cfg, 10).eval()

    def scan(shift=0, shape="cyl"):
        r = np.full(b, 1.5)
        d, rad = 0.3, 0.025
        t = theta - theta[b // 2 + shift]
        y = d * np.tan(t)
        hit = np.abs(y) < rad
        r[hit] = (d - np.sqrt(rad ** 2 - y[hit] ** 2) + rad) / np.cos(t[hit]) if shape == "cyl" else d / np.cos(t[hit])
        return torch.from_numpy((r / cfg["range_max"]).astype(np.float32))[None, None]

    with torch.no_grad():
        h0 = vae.trunk(scan(0))
        torch.testing.assert_close(vae.trunk(scan(15)), h0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.trunk(scan(-20)), h0, atol=1e-5, rtol=1e-5)
        assert (vae.trunk(scan(0, "flat")) - h0).abs().max() > 1e-3


def test_bench_alpha_sweep_small(trained, tmp_path, capsys):
    """The α_reenc sweep end to end on the tiny synthetic set: β-VAEs reused from an existing run, two α, one
    seed, K=3; per-α means (intervals need two seeds: null here) and the trade-off plot."""
    from m2vae_fusion.benchmarks.alpha import interval

    js, png = tmp_path / "alpha.json", tmp_path / "alpha.png"
    rc = main(["bench", "alpha", "--data", trained["data"], "--alphas", "0,1", "--seeds", "0", "--k", "3",
               "--runs", str(tmp_path / "runs"), "--config", trained["cfg"], "--init-betavae", trained["runs"],
               "--json", str(js), "--plot", str(png), "--epochs", "2", "--samples", "1"])
    assert rc == 0
    res = json.loads(js.read_text())
    # the budget: a subset data set of the first training shard, 2 epochs of M2VAE and head per run
    assert res["budget"] == {"epochs": 2, "samples": 1}
    with open(os.path.join(res["train_data"], "metadata.json")) as f:
        sub = json.load(f)
    with open(os.path.join(trained["data"], "metadata.json")) as f:
        full = json.load(f)
    first = next(e for e in full["shards"] if e["split"] == "train")
    assert sub["splits"]["train"] == first["samples"] and [e for e in sub["shards"] if e["split"] == "train"] == [first]
    assert [e for e in sub["shards"] if e["split"] == "test"] == [e for e in full["shards"] if e["split"] == "test"]
    with open(os.path.join(res["runs"][0]["bundle"], "manifest.json")) as f:
        cfg0 = json.load(f)["training"]["config"]
    assert cfg0["m2vae"]["epochs"] == 2 and cfg0["head"]["epochs"] == 2
    assert all(math.isfinite(r["elbo"]) for r in res["runs"])
    assert [r["alpha_reenc"] for r in res["per_alpha"]] == [0.0, 1.0] and len(res["runs"]) == 2
    for row in res["per_alpha"]:
        assert row["in_place_k_random"]["n"] == 1 and 0 <= row["in_place_k_random"]["mean"] <= 1
        assert row["within_class_share"]["ci95"] is None  # NaN in memory; null in the JSON file (standard JSON)
    with open(os.path.join(res["runs"][1]["bundle"], "manifest.json")) as f:
        assert json.load(f)["training"]["config"]["m2vae"]["alpha_reenc"] == 1.0
    assert png.stat().st_size > 1000 and "alpha_reenc sweep" in capsys.readouterr().out
    iv = interval([0.5, 0.7])
    assert iv["mean"] == pytest.approx(0.6) and iv["ci95"] == pytest.approx(12.706 * 0.1414214 / 1.4142136, rel=1e-4)
    assert main(["bench", "alpha", "--data", trained["data"], "--alphas", "-1"]) == 2


def test_train_mopoe_objective_exports_and_evaluates(trained, tmp_path):
    """``objective: mopoe`` (issue 11) through the same pipeline (β-VAEs reused): the manifest records it, the
    checkpoint re-exports it, and the evaluation runs the bundle (fusion engine) with finite figures."""
    out, runs = str(tmp_path / "mopoe"), str(tmp_path / "runs")
    rc = main(["train", "--out", out, "--config", trained["cfg"], "--runs", runs, "--set", "objective=mopoe",
               "--init-betavae", trained["runs"]])
    assert rc == 0
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    assert man["objective"] == "mopoe" and man["training"]["config"]["objective"] == "mopoe"
    assert main(["verify", out]) == 0
    again = str(tmp_path / "again")
    assert main(["export", "--from-checkpoint", out + ".torch.pt", "--out", again]) == 0
    with open(os.path.join(again, "manifest.json")) as f:
        assert json.load(f)["objective"] == "mopoe"
    js = tmp_path / "e.json"
    assert main(["eval", out, "--data", trained["data"], "--json", str(js), "--reencode-steps", "3",
                 "--elbo-samples", "2", "--protocol", "paper"]) == 0
    res = json.loads(js.read_text())
    assert len(res["subset_accuracy"]) == 7 and all(0.0 <= a <= 1.0 for a in res["subset_accuracy"].values())
    assert "in_place" in res and set(res["z_diff"]) == set(res["subset_accuracy"])


def test_betavae_features_are_standardised_and_exported(trained, tmp_path):
    """betavae.standardize (default true): the cached features (the M2VAE's inputs) have per-dimension mean 0 and
    std 1 on the training split, the exported encoder returns those features and the exported decoder takes them
    back (the same reconstruction as the β-VAE's own latent space); false gives the raw latent means; a source run
    whose standardisation differs from the config gets its features cached again (--init-betavae with --data)."""
    import torch

    from m2vae_fusion.training.export import run_onnx
    from m2vae_fusion.training.networks import BetaVAE

    f = np.load(os.path.join(trained["runs"], "features.npz"))
    for m in ("camera", "lidar", "reflectance"):
        x = f[f"train/{m}"][f["train/present"][:, ["camera", "lidar", "reflectance"].index(m)]]
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-3)
        sd = x.std(0)  # 1, or below 1 for a dimension whose spread is under the scale floor (STD_FLOOR)
        assert np.all((np.abs(sd - 1) < 1e-2) | (sd < 1)), sd
    ck = torch.load(os.path.join(trained["runs"], "checkpoints", "betavae_reflectance.pt"), weights_only=False)
    with open(os.path.join(trained["out"], "manifest.json")) as fh:
        man = json.load(fh)
    bc = man["training"]["config"]["betavae"]
    arch = {k: bc[k] for k in ("camera_channels", "lidar_channels", "trunk_hidden", "reflectance_hidden")}
    vae = BetaVAE("reflectance", man["inputs"]["reflectance"]["preprocessing"], man["feature_dim"], arch)
    vae.load_checkpoint_state(ck["state"])
    assert not torch.all(vae.feature_scale == 1)
    x = np.random.default_rng(0).uniform(0, 1, (4, *vae.input_shape)).astype(np.float32)
    enc = run_onnx(os.path.join(trained["out"], "betavae_reflectance_encoder.onnx"), {"x": x})
    with torch.no_grad():
        raw, raw_lv = vae.encode_raw(torch.from_numpy(x))
        np.testing.assert_allclose(enc["mean"], ((raw - vae.feature_shift) / vae.feature_scale).numpy(), atol=1e-4)
        np.testing.assert_allclose(enc["log_variance"], (raw_lv - 2 * torch.log(vae.feature_scale)).numpy(),
                                   atol=1e-4)
        dec = run_onnx(os.path.join(trained["out"], "betavae_reflectance_decoder.onnx"), {"z": enc["mean"]})["x"]
        want = vae.decode_logits(raw)
        want = torch.sigmoid(want) if vae.likelihood == "bernoulli" else want
        np.testing.assert_allclose(dec, want.numpy(), atol=1e-4)  # the β-VAE's own reconstruction
    # a checkpoint from before standardisation loads as the identity
    old = {k: v for k, v in ck["state"].items() if not k.startswith("feature_")}
    vae.load_checkpoint_state(old)
    assert torch.all(vae.feature_scale == 1) and torch.all(vae.feature_shift == 0)
    # standardize=false with --init-betavae and --data: features cached again, raw latent means
    runs = str(tmp_path / "runs")
    assert main(["train", "--data", trained["data"], "--out", str(tmp_path / "raw"), "--config", trained["cfg"],
                 "--runs", runs, "--set", "betavae.standardize=false", "--init-betavae", trained["runs"]]) == 0
    g = np.load(os.path.join(runs, "features.npz"))
    assert not np.allclose(g["train/lidar"].std(0), 1, atol=1e-2)
    assert main(["train", "--out", str(tmp_path / "raw2"), "--config", trained["cfg"], "--runs",
                 str(tmp_path / "runs2"), "--init-betavae", runs]) == 2  # standardize differs, no --data: refused


def test_position_jitter_moves_the_train_crops_only_within_bounds():
    """``position_jitter``: the train split's target positions move by at most the jitter across and along the line
    of sight (z kept, seeded); the camera crops of a jittered split differ from exact ones, the shipped (registered)
    LiDAR windows change less often than unregistered ones; 0 changes nothing."""
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.sim import hard
    from m2vae_fusion.training.data import jitter_positions, preprocess_split

    rng = np.random.default_rng(0)
    pos = np.column_stack([rng.uniform(0.1, 0.3, 50), rng.uniform(-0.1, 0.1, 50), np.full(50, 0.03)])
    moved = jitter_positions(pos, 0.01, np.random.default_rng(1))
    step = moved - pos
    r = np.hypot(pos[:, 0], pos[:, 1])
    along = (step[:, 0] * pos[:, 0] + step[:, 1] * pos[:, 1]) / r
    across = (-step[:, 0] * pos[:, 1] + step[:, 1] * pos[:, 0]) / r
    assert np.abs(along).max() <= 0.01 + 1e-12 and np.abs(across).max() <= 0.01 + 1e-12
    assert np.abs(across).max() > 0.005 and np.all(step[:, 2] == 0)
    np.testing.assert_array_equal(moved, jitter_positions(pos, 0.01, np.random.default_rng(1)))
    np.testing.assert_array_equal(jitter_positions(pos, 0.0, np.random.default_rng(1)), pos)
    b = Bundle.load(os.path.join(REPO, "models", "amiro"))
    d = hard.generate_samples(4, np.random.default_rng(3))
    sensors = {m: b.input_config(m) for m in b.modalities}
    exact = preprocess_split(d, sensors, b.modalities, b.modalities)
    jit = preprocess_split(d, sensors, b.modalities, b.modalities, position_jitter=0.01,
                           rng=np.random.default_rng(2))
    assert not np.allclose(exact.inputs["camera"], jit.inputs["camera"])
    np.testing.assert_array_equal(exact.inputs["reflectance"], jit.inputs["reflectance"])  # no crop
    # the shipped LiDAR window is registered on the target's silhouette: a position 1 cm off mostly gives the same
    # window; without registration every window moves
    assert b.input_config("lidar")["crop"]["register"] is True
    axes = tuple(range(1, exact.inputs["lidar"].ndim))
    same = np.all(np.isclose(exact.inputs["lidar"], jit.inputs["lidar"]), axis=axes)
    unreg = dict(sensors, lidar=copy.deepcopy(sensors["lidar"]))
    unreg["lidar"]["crop"]["register"] = False
    exact_u = preprocess_split(d, unreg, b.modalities, b.modalities)
    jit_u = preprocess_split(d, unreg, b.modalities, b.modalities, position_jitter=0.01, rng=np.random.default_rng(2))
    same_u = np.all(np.isclose(exact_u.inputs["lidar"], jit_u.inputs["lidar"]), axis=axes)
    assert same.sum() > same_u.sum() and same_u.sum() < len(same_u), (same, same_u)
    assert cfgmod.load_config(None)["position_jitter"] == 0.0
