"""The multimodal-VAE objectives (issue 11): closed-form pieces against hand values, each objective trains a tiny
model on the FUSION 2019 MoG set, the config selects it, and its bundle runs through the fusion engine unchanged."""
import json
import math
import os

import numpy as np
import pytest
import torch

from m2vae_fusion.errors import UserError
from m2vae_fusion.training import config as cfgmod
from m2vae_fusion.training import objectives
from m2vae_fusion.training.mog import make_mog
from m2vae_fusion.training.objectives import base

ALL = objectives.NAMES


def _g(mu, var):
    return torch.tensor([mu], dtype=torch.float32), torch.log(torch.tensor([var], dtype=torch.float32))


def test_poe_matches_the_gaussian_product_by_hand():
    # N(1, 1) · N(3, 1/3): precision 1 + 3 = 4, mean (1·1 + 3·3)/4 = 2.5
    mu, lv = base.poe([_g([1.0], [1.0]), _g([3.0], [1 / 3])], prior_expert=False)
    assert mu.item() == pytest.approx(2.5, abs=1e-5) and math.exp(lv.item()) == pytest.approx(0.25, abs=1e-5)
    # with the prior expert N(0, 1): precision 5, mean 10/5 = 2
    mu, lv = base.poe([_g([1.0], [1.0]), _g([3.0], [1 / 3])], prior_expert=True)
    assert mu.item() == pytest.approx(2.0, abs=1e-5) and math.exp(lv.item()) == pytest.approx(0.2, abs=1e-5)


def test_mixture_moments_match_sampling():
    comps = [_g([-2.0], [0.5]), _g([1.0], [2.0])]
    mu, lv = base.mixture_moments(comps)
    assert mu.item() == pytest.approx(-0.5, abs=1e-6)
    # E[z²] = ½(0.5 + 4) + ½(2 + 1) = 3.75; var = 3.75 − 0.25 = 3.5
    assert math.exp(lv.item()) == pytest.approx(3.5, rel=1e-5)
    rng = np.random.default_rng(0)
    k = rng.integers(0, 2, 400_000)
    z = np.where(k == 0, rng.normal(-2, math.sqrt(0.5), k.size), rng.normal(1, math.sqrt(2.0), k.size))
    assert z.mean() == pytest.approx(mu.item(), abs=0.02) and z.var() == pytest.approx(3.5, rel=0.02)


def test_expert_models_combine_as_their_papers_say():
    torch.manual_seed(0)
    x = {"a": torch.randn(5, 2), "b": torch.randn(5, 2)}
    ea, eb = None, None
    for name in ("mvae", "mmvae", "mopoe"):
        model = objectives.get(name).build(["a", "b"], {"a": 2, "b": 2}, 3, [8, 8])
        ea, eb = model.expert("a", x), model.expert("b", x)
        ab = model.encode(("a", "b"), x)
        if name == "mvae":
            want = base.poe([ea, eb], prior_expert=True)
            assert torch.allclose(model.encode(("a",), x)[0], base.poe([ea], True)[0])
        elif name == "mmvae":
            want = base.mixture_moments([ea, eb])
            assert torch.allclose(model.encode(("a",), x)[0], ea[0])
        else:
            # the prior expert joins the product of the full set only (the MoPoE authors' implementation)
            want = base.mixture_moments([ea, eb, base.poe([ea, eb], prior_expert=True)])
            assert torch.allclose(model.encode(("b",), x)[1], eb[1], atol=1e-5)
        assert torch.allclose(ab[0], want[0], atol=1e-5) and torch.allclose(ab[1], want[1], atol=1e-5)


def _train(name, steps=150, seed=0, alpha_reenc=0.0):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = make_mog(40, seed)
    obj = objectives.get(name)
    model = obj.build(["a", "b"], {"a": 2, "b": 2}, 2, [32, 16], 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xa, xb = torch.from_numpy(data["a"]), torch.from_numpy(data["b"])
    kw = dict(beta_norm=0.01, alpha=0.1, alpha_reenc=alpha_reenc)
    with torch.no_grad():
        first = float(obj.loss(model, {"a": xa, "b": xb}, sample=False, **kw)["loss"])
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, xa.shape[0], (64,), generator=g)
        loss = obj.loss(model, {"a": xa[idx], "b": xb[idx]}, **kw)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = float(obj.loss(model, {"a": xa, "b": xb}, sample=False, **kw)["loss"])
    return model, data, first, last


@pytest.mark.parametrize("name", ALL)
def test_each_objective_trains_a_tiny_mog_model(name):
    from sklearn.naive_bayes import GaussianNB

    model, data, first, last = _train(name)
    assert math.isfinite(last) and last < 0.7 * first, (first, last)
    assert model.objective == name
    with torch.no_grad():
        xs = {"a": torch.from_numpy(data["a"]), "b": torch.from_numpy(data["b"])}
        z = {k: model.encode(s, xs)[0].numpy() for k, s in (("ab", ("a", "b")), ("a", ("a",)), ("b", ("b",)))}
    # the joint embedding separates the 10 classes far above chance (0.1) after 150 steps
    acc = GaussianNB().fit(z["ab"], data["y"]).score(z["ab"], data["y"])
    assert acc > 0.5, acc
    for v in z.values():
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("name", ALL)
def test_missing_modalities_count_only_where_present(name):
    torch.manual_seed(1)
    obj = objectives.get(name)
    model = obj.build(["a", "b", "c"], {"a": 2, "b": 2, "c": 2}, 2, [8, 8], 8)
    xs = {m: torch.randn(6, 2) for m in "abc"}
    present = torch.ones(6, 3, dtype=torch.bool)
    present[:3, 2] = False
    kw = dict(beta_norm=0.01, alpha=0.1, alpha_reenc=1.0, sample=False)
    torch.manual_seed(2)
    ref = obj.loss(model, xs, present, **kw)["loss"].detach()
    xs2 = dict(xs)
    xs2["c"] = xs["c"].clone()
    xs2["c"][:3] = 1e3  # values of a missing modality must not change the loss
    torch.manual_seed(2)
    out = obj.loss(model, xs2, present, **kw)["loss"].detach()
    assert torch.isfinite(ref) and float(out) == pytest.approx(float(ref), rel=1e-5)


def test_config_selects_and_validates_the_objective():
    assert cfgmod.load_config()["objective"] == "m2vae"
    assert cfgmod.load_config(None, ["objective=mopoe"])["objective"] == "mopoe"
    with pytest.raises(UserError, match="objective"):
        cfgmod.load_config(None, ["objective=poe"])
    with pytest.raises(KeyError, match="unknown objective"):
        objectives.get("tvae")


@pytest.mark.parametrize("name", ["mvae", "mopoe", "mmvae", "jmvae"])
def test_exported_bundle_fuses_and_merges(tmp_path, name):
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.core.fusion import FusionEngine
    from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS
    from m2vae_fusion.training.export import default_class_names, export_bundle, verify_bundle
    from m2vae_fusion.training.networks import BetaVAE, ClassHead

    torch.manual_seed(3)
    mods = ["camera", "lidar", "reflectance"]
    sensors = {m: dict(DEFAULT_CONFIGS[m]) for m in mods}
    fd, ld = 4, 3
    betavaes = {m: BetaVAE(m, sensors[m], fd, {"camera_channels": [4, 4, 4, 4], "lidar_channels": [4, 4],
                                               "trunk_hidden": 16, "reflectance_hidden": [8]}) for m in mods}
    model = objectives.get(name).build(mods, {m: fd for m in mods}, ld, [16, 8], 8)
    names = default_class_names()
    out = export_bundle(str(tmp_path / name), betavaes, model, ClassHead(ld, len(names), 8), sensors=sensors,
                        class_names=names, seed=0, checkpoint=None)
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["objective"] == name
    assert verify_bundle(out)["objective"] == name
    from m2vae_fusion.training.export import rebuild_bundle
    with open(os.path.join(rebuild_bundle(out, str(tmp_path / "rebuilt")), "manifest.json")) as f:
        assert json.load(f)["objective"] == name  # a torch-free rebuild keeps the objective
    bundle = Bundle.load(out)
    assert bundle.objective == name
    # the ONNX subset encoder computes the objective's combination (PoE / MoE / MoPoE inside the graph)
    rng = np.random.default_rng(0)
    feats = {m: rng.normal(size=(2, fd)).astype(np.float32) for m in mods}
    with torch.no_grad():
        want = model.encode(("camera", "lidar"), {m: torch.from_numpy(v) for m, v in feats.items()})
    from m2vae_fusion.training.export import run_onnx
    got = run_onnx(os.path.join(out, bundle.manifest["networks"]["subset_encoder"]["camera+lidar"]),
                   {m: feats[m] for m in ("camera", "lidar")})
    assert np.allclose(got["mean"], want[0].numpy(), atol=1e-4)
    assert np.allclose(got["log_variance"], want[1].numpy(), atol=1e-4)
    eng = FusionEngine(bundle)
    a = eng.observe(None, "t", "camera", feats["camera"][0], 1.0, "a1")
    a = eng.observe(a, "t", "lidar", feats["lidar"][0], 2.0, "a1")
    b = eng.observe(None, "t", "reflectance", feats["reflectance"][0], 1.5, "a2")
    merged, changed = eng.merge(a, b)
    assert changed and merged.modalities(bundle.modalities) == tuple(mods)
    probs = eng.classify(merged)
    assert np.all(np.isfinite(merged.mean)) and np.all(np.isfinite(merged.log_variance))
    assert probs is not None and abs(float(probs.sum()) - 1.0) < 1e-3


def test_mopoe_draws_one_component_per_sample_in_equal_blocks():
    from m2vae_fusion.training.objectives.mopoe import component_of

    pick = component_of(torch.ones(8, 3), complete=True)
    assert pick.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # floor(8/3) = 2 per component, the rest to the last
    avail = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).repeat(50, 1)
    torch.manual_seed(0)
    pick = component_of(avail, complete=False)
    assert torch.all(avail[torch.arange(150), pick] == 1)  # only subsets a sample holds
    assert set(pick[2::3].tolist()) == {0, 1, 2}


def test_bench_baselines_small(tmp_path, capsys):
    """``bench baselines`` end to end on a tiny budget: table, JSON with per-seed rows and intervals, plot; with
    MultiVae installed (make setup installs it) the cross-check rows and the comparison are there too."""
    import importlib.util

    from m2vae_fusion.cli import main

    js, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "baselines", "--sets", "mog", "--objectives", "m2vae,mopoe", "--seeds", "0,1", "--epochs", "1",
               "--samples-per-class", "20", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    res = json.loads(js.read_text())
    with_mv = importlib.util.find_spec("multivae") is not None
    assert len(res["runs"]) == 2 * (1 + (3 if with_mv else 1))  # m2vae has no MultiVae counterpart
    ours = {s["objective"]: s for s in res["summary"] if s["impl"] == "ours"}
    assert set(ours) == {"m2vae", "mopoe"} and ours["mopoe"]["ab"]["n"] == 2
    assert all(0.0 <= r["ab"] <= 1.0 for r in res["runs"]) and "exact_ab" in ours["mopoe"]
    if with_mv:
        assert [c["objective"] for c in res["comparison"]] == ["mopoe"]
    assert png.stat().st_size > 1000 and "MoG" in capsys.readouterr().out
    assert main(["bench", "baselines", "--objectives", "tvae"]) == 2
