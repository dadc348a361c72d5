"""``bench baselines --sets emnist`` (issue 11 (c), the M2VAE ICLR draft's e-MNIST from real data sets) on the small
Fashion-MNIST fixture kept in the repository (``test/fixtures/emnist_small.npz``: 30 t10k images per class pooled to
14×14, made by :func:`m2vae_fusion.data.emnist.make_fixture`) and scikit-learn's bundled digits, so it never skips."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "emnist_small.npz")


def test_fixture_loads_and_splits():
    from m2vae_fusion.data.emnist import load_digits_split, load_fashion

    f = load_fashion(FIXTURE)
    assert f["train_x"].shape == (200, 196) and f["test_x"].shape == (100, 196)
    assert 0.0 <= f["train_x"].min() and f["train_x"].max() <= 1.0 and f["train_x"].max() > 0.5
    assert np.bincount(f["test_y"]).tolist() == [10] * 10
    d = load_digits_split()
    assert d["train_x"].shape[1] == 64 and len(d["train_y"]) + len(d["test_y"]) == 1797
    assert not set(map(bytes, d["train_x"][:50])) & set(map(bytes, d["test_x"]))  # disjoint split


def test_pairings_share_z_and_shuffle_within_class():
    import torch

    from m2vae_fusion.benchmarks import baselines_emnist as be

    z = be.truncated_prior(5000, 2, np.random.default_rng(0))
    assert np.abs(z).max() <= 2.0 and abs(z.std() - 0.88) < 0.05  # N(0,1) truncated at ±2σ: sd 0.880
    torch.manual_seed(0)
    ca, cb = be.build_cvae(64, 10, 2, [16]), be.build_cvae(196, 10, 2, [16])
    g = be.generate(ca, cb, 4, np.random.default_rng(1), 2)
    assert g["a"].shape == (40, 64) and g["b"].shape == (40, 196) and g["y"].tolist() == sorted(g["y"].tolist())
    with torch.no_grad():  # both images decode the same draw z with the same class
        zt, yt = torch.from_numpy(g["z"]), torch.from_numpy(g["y"])
        assert np.allclose(torch.sigmoid(cb.decode_logits(zt, yt)).numpy(), g["b"], atol=1e-6)
    s = be.shuffle_within_class(g, np.random.default_rng(2))
    assert (s["a"] == g["a"]).all() and not (s["b"] == g["b"]).all()
    for c in range(10):
        idx = g["y"] == c
        assert sorted(map(bytes, s["b"][idx])) == sorted(map(bytes, g["b"][idx]))


def test_standardise_unit_mean_variance_and_jacobian():
    from m2vae_fusion.benchmarks.baselines_emnist import standardise

    rng = np.random.default_rng(0)
    tr = {"a": rng.uniform(0, 0.5, (400, 64)).astype(np.float32), "b": rng.uniform(0, 1, (400, 196)).astype(np.float32)}
    te = {"a": tr["a"][:10] * 1.0, "b": tr["b"][:10] * 1.0}
    tr2, te2, logj = standardise(tr, te)
    for m in ("a", "b"):
        assert abs(tr2[m].var(0).mean() - 1.0) < 1e-4 and np.abs(tr2[m].mean(0)).max() < 1e-5
        assert np.allclose(te2[m], tr2[m][:10])
    s_a, s_b = np.sqrt(tr["a"].var(0).mean()), np.sqrt(tr["b"].var(0).mean())  # ≈ 0.144, 0.289
    assert abs(logj - (-64 * np.log(s_a) - 196 * np.log(s_b))) < 1e-3


def test_mixture_elbo_uses_every_component():
    import torch

    from m2vae_fusion.benchmarks import baselines_emnist as be
    from m2vae_fusion.training import objectives

    xs = {"a": torch.rand(6, 64), "b": torch.rand(6, 196)}
    for name, k in (("mopoe", 3), ("mmvae", 2), ("mvae", 1), ("m2vae", 1)):
        model = objectives.get(name).build(["a", "b"], {"a": 64, "b": 196}, 2, [16], 8, "sigmoid")
        assert len(be.posterior_components(model, "ab", xs)) == k
        assert len(be.posterior_components(model, "a", xs)) == 1
        e = be.elbo(model, {"a": xs["a"].numpy(), "b": xs["b"].numpy()}, 2, 0)
        assert set(e) == {"ab", "a", "b", "kl_ab", "kl_a", "kl_b"}
        assert all(math.isfinite(v) for v in e.values()) and all(e[k] < -e[f"kl_{k}"] for k in ("ab", "a", "b"))


def test_bench_baselines_emnist_small(tmp_path, capsys):
    """Every objective on the three pairings, two seeds, a tiny budget: the table, JSON rows and intervals, finite
    ELBOs with a rank per subset, raw-pixel accuracies above chance, the Fig. 2 plot; a missing data directory is a
    one-line error naming the path and the install script."""
    from m2vae_fusion.cli import main

    js, png = tmp_path / "e.json", tmp_path / "e.png"
    rc = main(["bench", "baselines", "--sets", "emnist", "--emnist-data", FIXTURE, "--seeds", "0,1",
               "--emnist-epochs", "2", "--emnist-pairs-per-class", "12", "--emnist-cvae-epochs", "2",
               "--emnist-fashion-per-class", "20", "--emnist-elbo-samples", "2", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(js.read_text())["emnist"]
    names = ["m2vae", "jmvae", "mvae", "mmvae", "mopoe"]
    assert list(res["summary"]) == ["entangled", "shuffled", "real"]
    for p, summary in res["summary"].items():
        assert [s["objective"] for s in summary] == names
        assert len(res["runs"][p]) == 2 * len(names)
        for s in summary:
            assert s["ab"]["n"] == 2 and math.isfinite(s["ab"]["ci95"])
            assert all(0.0 <= s[k]["mean"] <= 1.0 for k in ("ab", "a", "b"))
            assert all(math.isfinite(s[f"elbo_{k}"]["mean"]) for k in ("ab", "a", "b"))
            assert all(s[f"kl_{k}"]["mean"] > 0 for k in ("ab", "a", "b"))  # KL(q‖p) of a trained encoder
            assert s["coh_a"]["mean"] >= 0 and s["coh_b"]["mean"] >= 0
        assert sorted(s["rank_ab"] for s in summary) == [1, 2, 3, 4, 5]
        assert res["raw"][p]["ab"] > 0.3  # the paired images carry the class (chance 0.1)
        assert res["data"]["pairs"][p] == {"train": 120, "test": 50}
    assert "exact_ab" in res["summary"]["real"][4] and "exact_ab" not in res["summary"]["real"][0]
    for name in names:
        assert f"\n{name} " in out
    assert "m-MNIST (naive" in out and "draft Table 1" in out
    assert len(res["latents"]["entangled"]["m2vae"]["ab"]) == 50
    plot = tmp_path / "e_emnist.png"
    assert plot.stat().st_size > 10_000
    # a real budget on the naive pairing of real images: the joint latent carries the class (chance 0.1)
    rc = main(["bench", "baselines", "--sets", "emnist", "--emnist-data", FIXTURE, "--seeds", "0,1",
               "--objectives", "m2vae,mopoe", "--emnist-pairings", "real", "--emnist-epochs", "40",
               "--emnist-pairs-per-class", "20", "--emnist-elbo-samples", "2", "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())["emnist"]
    assert all(s["ab"]["mean"] > 0.2 for s in res["summary"]["real"])
    assert main(["bench", "baselines", "--sets", "emnist", "--emnist-data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "install_bench_data.sh" in err
    assert main(["bench", "baselines", "--sets", "emnist", "--emnist-pairings", "mixed"]) == 2
