"""Issue 13, item 1: the fusion engine never stores or returns a non-finite or absurd value.

Latent bounds (format v3, docs/formats.md "latent_bounds"), output validation, precision caps, and that honest
latents accumulated over a long run are never refused. Tiny linear bundles (test/linear_bundle.py) with bounds
computed from simulated samples, and the shipped bundle for the long honest run.
"""
import json
import os
import shutil

import numpy as np
import pytest

from linear_bundle import make_linear_bundle
from m2vae_fusion.cli import main
from m2vae_fusion.core.bundle import Bundle, LatentBounds, sha256_file
from m2vae_fusion.core.fusion import PROBABILITY_TOL, Belief, FusionEngine, FusionError, Slot, check_probabilities
from m2vae_fusion.core.reasons import DropReason
from m2vae_fusion.errors import BundleError

D = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def _write_manifest(path, man):
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(man, f)


@pytest.fixture(scope="module")
def raw():
    """Simulated samples in the shard layout (the bounds data)."""
    from m2vae_fusion.sim.generate import generate_samples

    return generate_samples(60, np.random.default_rng(3))


@pytest.fixture(scope="module")
def bounded(tmp_path_factory, raw):
    return make_linear_bundle(str(tmp_path_factory.mktemp("g") / "v3"), D, D, seed=4, bounds_data=raw)


@pytest.fixture(scope="module")
def bundle(bounded):
    return Bundle.load(bounded)


def _features(bundle, raw, rows):
    """β-VAE features (encoder means) float32 {modality: (len(rows), D*)} of raw samples, as the node computes."""
    from m2vae_fusion.core.preprocess import preprocess

    cfg = {m: bundle.input_config(m) for m in bundle.modalities}
    return {m: bundle.encode_feature(m, preprocess(m, np.asarray(raw[m])[rows], cfg[m]))[0] for m in bundle.modalities}


def _snapshot(b):
    return None if b is None else (b.target_id, b.mean.copy(), b.log_variance.copy(), dict(b.slots), b.updated)


def _unchanged(b, snap):
    if b is None:
        return snap is None
    return (b.target_id == snap[0] and np.array_equal(b.mean, snap[1]) and np.array_equal(b.log_variance, snap[2])
            and b.slots == snap[3] and b.updated == snap[4])


def _honest_belief(eng, feats, i=0):
    b = eng.observe(None, "t", "camera", feats["camera"][i], 1.0, "a")
    return eng.observe(b, "t", "lidar", feats["lidar"][i], 1.1, "a")


# ------------------------------------------------------------------------------------------------ format v3

def test_bounds_are_the_training_encodings_extremes(bounded, bundle, raw):
    man = _manifest(bounded)
    assert man["format_version"] == 3 and bundle.format_version == 3
    lb = bundle.latent_bounds
    assert isinstance(lb, LatentBounds) and man["latent_bounds"]["data"]["samples"] == 60
    assert man["latent_bounds"]["data"]["encodings"] == 60 * 7  # every subset of every (fully observed) sample
    feats = _features(bundle, raw, np.arange(60))
    means, logvars = [], []
    for key in bundle.subsets:
        mean, logvar = bundle.encode_subset({m: feats[m] for m in key.split("+")})
        means.append(mean)
        logvars.append(logvar)
    means, logvars = np.concatenate(means), np.concatenate(logvars)
    np.testing.assert_allclose(lb.mean_min, means.min(0), atol=1e-5)
    np.testing.assert_allclose(lb.mean_max, means.max(0), atol=1e-5)
    np.testing.assert_allclose(lb.log_variance_min, logvars.min(0), atol=1e-5)
    np.testing.assert_allclose(lb.precision_max, np.exp(-logvars.min(0)), rtol=1e-4)
    assert lb.in_range(means).all()
    pad = lb.margin_fraction * (lb.mean_max - lb.mean_min) + lb.margin_absolute
    np.testing.assert_allclose(lb.upper, lb.mean_max + pad)
    assert main(["verify", bounded]) == 0


def test_unknown_format_version_and_bad_bounds_refused(tmp_path, bounded):
    path = str(tmp_path / "b")
    shutil.copytree(bounded, path)
    man = _manifest(path)
    for version in (4, 0, "3", None):
        _write_manifest(path, {**man, "format_version": version})
        with pytest.raises(BundleError, match=r"manifest\.json: unknown format_version"):
            Bundle.load(path)
    no_bounds = {k: v for k, v in man.items() if k != "latent_bounds"}
    _write_manifest(path, no_bounds)
    with pytest.raises(BundleError, match="latent_bounds"):
        Bundle.load(path)
    for bad in ({"mean_max": man["latent_bounds"]["mean_max"][:-1]}, {"mean_min": [float("nan")] * D},
                {"margin_fraction": -1.0}, {"mean_min": [1e9] * D}):
        _write_manifest(path, {**man, "latent_bounds": {**man["latent_bounds"], **bad}})
        with pytest.raises(BundleError, match="latent_bounds"):
            Bundle.load(path)
    # widening the bounds by editing the manifest changes what the model_id covers: refused by the sums check
    wide = {**man["latent_bounds"], "mean_max": [v + 1e6 for v in man["latent_bounds"]["mean_max"]]}
    _write_manifest(path, {**man, "latent_bounds": wide})
    with pytest.raises(BundleError, match="model_id"):
        Bundle.load(path)
    assert main(["verify", path]) == 1
    # a format-v2 bundle still loads: no bounds, finiteness checks only
    _write_manifest(path, {**no_bounds, "format_version": 2})
    with pytest.raises(BundleError, match="model_id"):  # the v3 model_id covered the bounds
        Bundle.load(path)
    v2 = make_linear_bundle(str(tmp_path / "v2"), D, D, seed=4)
    assert _manifest(v2)["format_version"] == 2 and Bundle.load(v2).latent_bounds is None
    assert FusionEngine(Bundle.load(v2)).bounds is None


# ------------------------------------------------------------------------------------------------ peer latents

def test_extreme_peer_latent_refused_and_belief_kept(bundle, raw):
    eng = FusionEngine(bundle)
    own = _honest_belief(eng, _features(bundle, raw, [0]))
    probs = eng.classify(own)
    snap = _snapshot(own)
    evil = Belief("t", np.full(D, 3e38, np.float32), np.zeros(D, np.float32), {"reflectance": Slot(9.0, "mallory")})
    evil_snap = _snapshot(evil)
    for target in (own, None):
        with pytest.raises(FusionError, match="outside the training range") as info:
            eng.merge(target, evil)
        assert info.value.reason == DropReason.OUT_OF_RANGE and str(info.value.reason) == "out_of_range"
    assert _unchanged(own, snap) and _unchanged(evil, evil_snap)
    np.testing.assert_array_equal(eng.classify(own), probs)
    # just outside the margin in one dimension is refused, just inside accepted
    lb = bundle.latent_bounds
    for d in range(D):
        for side, sign in ((lb.upper, 1), (lb.lower, -1)):
            mean = ((lb.mean_min + lb.mean_max) / 2).astype(np.float32)
            mean[d] = side[d] + sign * 1e-3 * (lb.upper[d] - lb.lower[d])
            with pytest.raises(FusionError) as info:
                eng.merge(own, Belief("t", mean, np.zeros(D, np.float32), {"reflectance": Slot(9.0, "p")}))
            assert info.value.reason == DropReason.OUT_OF_RANGE
            mean[d] = side[d] - sign * 1e-3 * (lb.upper[d] - lb.lower[d])
            merged, changed = eng.merge(None, Belief("t", mean, np.zeros(D, np.float32),
                                                     {"reflectance": Slot(9.0, "p")}))
            assert changed and np.array_equal(merged.mean, mean)
    assert _unchanged(own, snap)


def test_without_bounds_extreme_peer_refused_as_non_finite(tmp_path, raw):
    """Format v2: no range check, but the overflowing decode is caught and nothing is stored."""
    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "v2"), D, D, seed=4))
    eng = FusionEngine(bundle)
    own = _honest_belief(eng, _features(bundle, raw, [0]))
    snap = _snapshot(own)
    evil = Belief("t", np.full(D, 3e38, np.float32), np.zeros(D, np.float32), {"reflectance": Slot(9.0, "mallory")})
    with pytest.raises(FusionError) as info:
        eng.merge(own, evil)
    assert info.value.reason == DropReason.NON_FINITE
    assert _unchanged(own, snap)


def test_peer_precision_capped_at_training_maximum(bundle, raw):
    eng = FusionEngine(bundle)
    lb = bundle.latent_bounds
    own = _honest_belief(eng, _features(bundle, raw, [1]))
    mid = ((lb.mean_min + lb.mean_max) / 2).astype(np.float32)
    for lv, expect in ((-80.0, lb.log_variance_min), (80.0, lb.log_variance_max)):
        peer = Belief("t", mid, np.full(D, lv, np.float32),
                      {m: Slot(5.0, "p") for m in bundle.modalities})  # holds all the own evidence and more: adopted
        for target in (None, own):
            merged, changed = eng.merge(target, peer)
            assert changed and np.array_equal(merged.mean, mid)
            np.testing.assert_array_equal(merged.log_variance, expect)
            assert (np.exp(-merged.log_variance.astype(np.float64)) <= lb.precision_max * (1 + 1e-6)).all()
        assert (peer.log_variance == lv).all()  # the input is not modified
    # every own result holds at most the training maximum precision, too
    b = own
    for i, m in enumerate(bundle.modalities * 3):
        b = eng.observe(b, "t", m, _features(bundle, raw, [i])[m][0], 2.0 + i, "a")
        assert (b.log_variance >= lb.log_variance_min).all() and (b.log_variance <= lb.log_variance_max).all()


def test_non_finite_or_bad_peer_values_have_their_reasons(bundle):
    eng = FusionEngine(bundle)
    slots = {"camera": Slot(1.0, "p")}
    cases = [(Belief("t", np.full(D, np.nan, np.float32), np.zeros(D, np.float32), slots), DropReason.NON_FINITE),
             (Belief("t", np.zeros(D, np.float32), np.full(D, np.inf, np.float32), slots), DropReason.NON_FINITE),
             (Belief("t", np.full(D, 1e39), np.zeros(D), slots), DropReason.NON_FINITE),  # beyond float32
             (Belief("t", np.zeros(D + 1, np.float32), np.zeros(D + 1, np.float32), slots), DropReason.MISMATCH),
             (Belief("t", np.zeros(D, np.float32), np.zeros(D, np.float32), {}), DropReason.MISMATCH),
             (Belief("t", np.zeros(D, np.float32), np.zeros(D, np.float32), {"sonar": Slot(1.0, "p")}),
              DropReason.MISMATCH),
             (Belief("t", np.zeros(D, np.float32), np.zeros(D, np.float32), {"camera": Slot(float("nan"), "p")}),
              DropReason.NON_FINITE)]
    for peer, reason in cases:
        with pytest.raises(FusionError) as info:
            eng.merge(None, peer)
        assert info.value.reason == reason, peer


# ------------------------------------------------------------------------------------------------ own outputs

def test_own_encoding_out_of_range_refused(bundle, raw):
    eng = FusionEngine(bundle)
    own = _honest_belief(eng, _features(bundle, raw, [2]))
    snap = _snapshot(own)
    # a finite feature far from anything seen in training: the fused mean leaves the bounds (linear encoder)
    with pytest.raises(FusionError, match="outside the training range") as info:
        eng.observe(own, "t", "reflectance", np.full(D, 1e4, np.float32), 3.0, "a")
    assert info.value.reason == DropReason.ENCODING_OUT_OF_RANGE
    with pytest.raises(FusionError) as info:
        eng.observe(None, "t", "reflectance", np.full(D, -1e4, np.float32), 3.0, "a")
    assert info.value.reason == DropReason.ENCODING_OUT_OF_RANGE
    # overflowing the subset encoder gives non-finite outputs: refused before the range check
    with pytest.raises(FusionError, match="non-finite") as info:
        eng.observe(own, "t", "reflectance", np.full(D, 3e38, np.float32), 3.0, "a")
    assert info.value.reason == DropReason.NON_FINITE
    assert _unchanged(own, snap)
    # stale and unknown-modality observations keep their own reasons
    with pytest.raises(FusionError) as info:
        eng.observe(own, "t", "camera", np.zeros(D, np.float32), 0.5, "a")
    assert info.value.reason == DropReason.STALE
    with pytest.raises(FusionError) as info:
        eng.observe(own, "t", "sonar", np.zeros(D, np.float32), 3.0, "a")
    assert info.value.reason == DropReason.MISMATCH
    assert _unchanged(own, snap)


def test_merge_reencode_out_of_range_refused(tmp_path, raw):
    """A merge's re-encoding or a re-encode step whose result leaves the bounds is refused with
    ENCODING_OUT_OF_RANGE and changes nothing; an in-range merge with a peer latent at the edge is accepted."""
    path = make_linear_bundle(str(tmp_path / "b"), D, D, seed=4, bounds_data=raw)
    man = _manifest(path)
    lb = man["latent_bounds"]
    # narrow the accepted range (no margin but a hair): a latent at the upper edge is accepted, beyond refused
    lb.update(margin_fraction=0.0, margin_absolute=1e-3)
    from m2vae_fusion.core.bundle import manifest_model_id
    man["model_id"] = manifest_model_id(man)
    _write_manifest(path, man)
    bundle = Bundle.load(path)
    eng = FusionEngine(bundle)
    edge = np.asarray(lb["mean_max"], np.float32)
    span = np.asarray(lb["mean_max"]) - np.asarray(lb["mean_min"])
    peer = Belief("t", edge, np.zeros(D, np.float32), {"lidar": Slot(5.0, "p")})
    feats = _features(bundle, raw, [0])
    own = eng.observe(None, "t", "camera", feats["camera"][0], 1.0, "a")
    snap = _snapshot(own)
    # an own belief beyond the edge (as a corrupted store could hold): its re-encoding with the peer's slot (the
    # linear subset encoder averages the slots) lies beyond the edge too
    outside = Belief("t", (edge + 0.5 * span).astype(np.float32), np.zeros(D, np.float32), {"camera": Slot(1.0, "a")})
    out_snap = _snapshot(outside)
    with pytest.raises(FusionError) as info:
        eng.merge(outside, peer)
    assert info.value.reason == DropReason.ENCODING_OUT_OF_RANGE
    with pytest.raises(FusionError) as info:
        eng.reencode(outside)
    assert info.value.reason == DropReason.ENCODING_OUT_OF_RANGE
    merged, changed = eng.merge(own, peer)
    assert changed and bundle.latent_bounds.in_range(merged.mean)
    assert _unchanged(own, snap) and _unchanged(outside, out_snap)


def test_probabilities_validated(tmp_path, raw):
    check_probabilities("ok", np.array([[0.25, 0.75]], np.float32))
    check_probabilities("empty", np.zeros((0, 3), np.float32))
    for bad, reason in (([[np.nan, 1.0]], DropReason.NON_FINITE), ([[0.5, 0.6]], DropReason.INVALID_OUTPUT),
                        ([[np.inf, 0.0]], DropReason.NON_FINITE),
                        ([[0.5, 0.5], [np.nan, np.nan]], DropReason.NON_FINITE),
                        ([[0.5, 0.5], [0.0, -np.inf]], DropReason.NON_FINITE),
                        ([[1.5, -0.5]], DropReason.INVALID_OUTPUT),
                        ([[0.5, 0.5 - 2 * PROBABILITY_TOL]], DropReason.INVALID_OUTPUT)):
        with pytest.raises(FusionError) as info:
            check_probabilities("x", np.array(bad, np.float32))
        assert info.value.reason == reason
    for head in ("sigmoid", "logits"):
        bundle = Bundle.load(make_linear_bundle(str(tmp_path / head), D, D, seed=4, head=head, bounds_data=raw))
        feats = _features(bundle, raw, [0])
        for chains in (True, False):
            eng = FusionEngine(bundle, chains=chains)
            with pytest.raises(FusionError, match="class probabilities") as info:
                eng.observe(None, "t", "camera", feats["camera"][0], 1.0, "a")
            assert info.value.reason == DropReason.INVALID_OUTPUT
            # a peer latent is adopted only with valid head probabilities; classify() of any other belief (no
            # fused probabilities cached) runs the head and refuses too
            lb = bundle.latent_bounds
            peer = Belief("t", ((lb.mean_min + lb.mean_max) / 2).astype(np.float32), np.zeros(D, np.float32),
                          {"lidar": Slot(1.0, "p")})
            with pytest.raises(FusionError) as info:
                eng.merge(None, peer)
            assert info.value.reason == DropReason.INVALID_OUTPUT
            with pytest.raises(FusionError) as info:
                eng.classify(peer)
            assert info.value.reason == DropReason.INVALID_OUTPUT


def test_classify_refuses_absurd_belief(bundle):
    eng = FusionEngine(bundle)
    b = Belief("t", np.full(D, 3e38, np.float32), np.zeros(D, np.float32), {"camera": Slot(1.0, "a")})
    with pytest.raises(FusionError) as info:
        eng.classify(b)
    assert info.value.reason == DropReason.OUT_OF_RANGE
    b = Belief("t", np.full(D, np.nan, np.float32), np.zeros(D, np.float32), {"camera": Slot(1.0, "a")})
    with pytest.raises(FusionError) as info:
        eng.classify(b)
    assert info.value.reason == DropReason.NON_FINITE


def test_engine_methods_do_not_modify_inputs(bundle, raw):
    feats = _features(bundle, raw, [3, 4])
    for chains in (True, False):
        eng = FusionEngine(bundle, chains=chains)
        own = _honest_belief(eng, feats, 0)
        other = FusionEngine(bundle)
        peer = other.observe(None, "t", "reflectance", feats["reflectance"][1], 2.0, "b")
        peer = other.observe(peer, "t", "lidar", feats["lidar"][1], 2.5, "b")
        snaps = (_snapshot(own), _snapshot(peer))
        f = feats["camera"][1].copy()
        eng.observe(own, "t", "camera", f, 3.0, "a")
        eng.merge(own, peer)
        eng.merge(None, peer)
        eng.reencode(own)
        eng.classify(own)
        eng.z_diff(own)
        assert _unchanged(own, snaps[0]) and _unchanged(peer, snaps[1])
        np.testing.assert_array_equal(f, feats["camera"][1])
        merged, _ = eng.merge(own, peer)
        assert merged.mean is not peer.mean and merged.mean is not own.mean
        merged.mean[...] = 0  # the caller's copy: neither input shares its buffers
        assert _unchanged(own, snaps[0]) and _unchanged(peer, snaps[1])


# ------------------------------------------------------------------------------------------------ honest long run

@pytest.mark.parametrize("name,steps", [("amiro", 3000), ("amiro_reenc", 1000), ("amiro_easy", 3000),
                                        ("amiro_easy_noreenc", 1000)])
def test_honest_long_run_never_refused(name, steps):
    """Real encodings of repeated observations of one object of the bundle's world (simulated with another seed
    than the bounds data), fused and merged back and forth by two agents for 3000 steps (5 min at 10 Hz) with each
    shipped bundle: never refused, every stored value finite, in range, with capped precision and normalised
    probabilities; the easy-world bundles also classify the object."""
    from m2vae_fusion.core.preprocess import preprocess

    bundle = Bundle.load(os.path.join(ROOT, "models", name))
    assert bundle.format_version == 3, "the shipped bundle has latent bounds"
    lb = bundle.latent_bounds
    rng = np.random.default_rng(2024)
    easy = len(bundle.class_names) == 8
    if easy:
        from m2vae_fusion.sim.generate import make_world, random_sample

        world = make_world()
        try:
            samples = [random_sample(world, rng, label=5) for _ in range(24)]
        finally:
            world.close()
        raw = {m: np.stack([s[m] for s in samples]) for m in bundle.modalities}
    else:  # 24 views of one hard-world object (pose, distance, light, clutter vary)
        from m2vae_fusion.sim import hard

        raw = hard.generate_samples(24, rng, views=24)
        assert len(set(np.asarray(raw["label"]).tolist())) == 1
    feats = {}
    for m in bundle.modalities:
        cfg = bundle.input_config(m)
        x = preprocess(m, np.asarray(raw[m]), cfg, target_position=None if easy else raw["target_position"])
        feats[m] = bundle.encode_feature(m, x)[0]
    samples = range(24)
    t = [0.0]
    engines = {a: FusionEngine(bundle, clock=lambda: t[0]) for a in ("a", "b")}
    beliefs = {"a": None, "b": None}
    order = bundle.modalities
    n, excursion = len(samples), 0.0
    width = lb.upper - lb.lower
    for step in range(steps):
        t[0] = 0.1 * step
        for k, a in enumerate(("a", "b")):
            m = order[(step + k) % len(order)]
            i = (step * (3 + 2 * k) + k) % n
            beliefs[a] = engines[a].observe(beliefs[a], "obj", m, feats[m][i], t[0], a)
        for a, b in (("a", "b"), ("b", "a")):
            beliefs[a], _ = engines[a].merge(beliefs[a], beliefs[b])
        for a in ("a", "b"):
            bel = beliefs[a]
            assert np.isfinite(bel.mean).all() and lb.in_range(bel.mean)
            assert (bel.log_variance >= lb.log_variance_min).all()
            p = engines[a].classify(bel)
            assert np.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-3
            outside = np.maximum(lb.mean_min - bel.mean, bel.mean - lb.mean_max) / width
            excursion = max(excursion, float(outside.max()))
    # the beliefs hold evidence of both agents (and, in the easy world, classify the object); the slots' newest
    # contributions can all be one agent's at the last step, what the slots hold is both agents' evidence
    for a in ("a", "b"):
        assert {agent for s in beliefs[a].slots.values() for agent, _ in s.evidence} == {"a", "b"}
    if easy:
        assert int(np.argmax(engines["a"].classify(beliefs["a"]))) == 5
    print(f"largest excursion beyond the training range: {excursion:.3f} of the accepted width")


# ------------------------------------------------------------------------------------------------ export paths

@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ds") / "data")
    assert main(["dataset", "--out", out, "--samples", "40", "--seed", "5", "--workers", "1", "--no-progress"]) == 0
    return out


def test_bounds_written_by_both_export_paths(tmp_path, dataset_dir, capsys):
    pytest.importorskip("torch")
    from m2vae_fusion.data.shards import load_split

    # the torch export computes the bounds on the data set's train split (export_bundle(bounds_data=...))
    torch_out = str(tmp_path / "torch")
    assert main(["export", "--untrained", "--out", torch_out, "--feature-dim", "4", "--latent-dim", "4",
                 "--bounds-data", dataset_dir]) == 0
    assert "latent_bounds from" in capsys.readouterr().out
    t = _manifest(torch_out)
    assert t["format_version"] == 3
    n_train = len(load_split(dataset_dir, "train")["label"])
    assert t["latent_bounds"]["data"]["samples"] == n_train and t["latent_bounds"]["data"]["dataset"]["seed"] == 5
    assert t["latent_bounds"]["data"]["encodings"] == 7 * n_train
    # the torch-free rebuild recomputes the same bounds from the same networks (kept byte for byte)
    rebuilt = str(tmp_path / "rebuilt")
    assert main(["export", "--from-bundle", torch_out, "--out", rebuilt, "--bounds-data", dataset_dir]) == 0
    r = _manifest(rebuilt)
    assert r["format_version"] == 3 and r["latent_bounds"] == t["latent_bounds"]
    assert all(r["files"][n] == d for n, d in t["files"].items() if n.endswith(".onnx"))
    # a rebuild without --bounds-data keeps a v3 source's bounds
    again = str(tmp_path / "again")
    assert main(["export", "--from-bundle", rebuilt, "--out", again]) == 0
    assert _manifest(again)["latent_bounds"] == r["latent_bounds"] and _manifest(again)["model_id"] == r["model_id"]
    # a format-v2 bundle gains bounds (v3, a new model_id) with its files unchanged
    v2 = make_linear_bundle(str(tmp_path / "v2"), D, D, seed=4)
    p = _manifest(v2)
    assert p["format_version"] == 2 and "latent_bounds" not in p
    assert main(["export", "--from-bundle", v2, "--out", v2, "--bounds-data", dataset_dir]) == 0
    q = _manifest(v2)
    assert q["format_version"] == 3 and q["files"] == p["files"] and q["model_id"] != p["model_id"]
    assert q["latent_bounds"]["data"]["samples"] == n_train
    # add_latent_bounds (what `export --run ... --bounds-data` runs after the trainer's export): manifest only
    from m2vae_fusion.training.export import add_latent_bounds
    v2b = make_linear_bundle(str(tmp_path / "v2b"), D, D, seed=4)
    added = add_latent_bounds(v2b, dataset_dir)
    assert added["format_version"] == 3 and added["latent_bounds"] == q["latent_bounds"]
    assert added["files"] == _manifest(v2b)["files"] and Bundle.load(v2b).latent_bounds is not None
    capsys.readouterr()
    for path in (torch_out, rebuilt, again, v2, v2b):
        assert main(["verify", path]) == 0
        assert "latent_bounds: from" in capsys.readouterr().out
        assert Bundle.load(path).latent_bounds is not None
    # a bad --bounds-data stops with exit 2 naming the file
    assert main(["export", "--from-bundle", v2, "--out", str(tmp_path / "x"), "--bounds-data",
                 str(tmp_path / "nope")]) == 2
    assert "nope/metadata.json" in capsys.readouterr().err


def test_shipped_bundles_have_bounds_and_refuse_the_reported_latent():
    """The shipped bundles (hard world: models/amiro, models/amiro_reenc; easy world: models/amiro_easy,
    models/amiro_easy_noreenc) carry latent bounds (computed on a seed-7 simulated data set, the seed of their
    training set); the 3e38 latent of the issue is refused by all."""
    for name in ("amiro", "amiro_reenc", "amiro_easy", "amiro_easy_noreenc"):
        path = os.path.join(ROOT, "models", name)
        man = _manifest(path)
        assert man["format_version"] == 3 and man["latent_bounds"]["data"]["dataset"]["seed"] == 7
        bundle = Bundle.load(path)
        lb = bundle.latent_bounds
        assert (lb.mean_max > lb.mean_min).all() and np.isfinite(lb.precision_max).all()
        # the 3e38 latent of the report is refused, a latent at the centre of the range accepted
        eng = FusionEngine(bundle)
        evil = Belief("t", np.full(bundle.latent_dim, 3e38, np.float32), np.zeros(bundle.latent_dim, np.float32),
                      {"lidar": Slot(1.0, "mallory")})
        with pytest.raises(FusionError) as info:
            eng.merge(None, evil)
        assert info.value.reason == DropReason.OUT_OF_RANGE
        centre = Belief("t", ((lb.mean_min + lb.mean_max) / 2).astype(np.float32),
                        np.zeros(bundle.latent_dim, np.float32), {"lidar": Slot(1.0, "p")})
        merged, _ = eng.merge(None, centre)
        assert np.isfinite(eng.classify(merged)).all()
        assert main(["verify", path]) == 0


def test_shipped_networks_without_bounds_still_never_store_the_reported_latent(tmp_path):
    """The shipped networks as a format-v2 bundle (no bounds): the 3e38 latent of the issue is not adopted (its head
    probabilities are NaN) and not merged (the decoders overflow); the belief keeps its value."""
    from m2vae_fusion.core.bundle import compute_model_id

    path = str(tmp_path / "amiro_v2")
    shutil.copytree(os.path.join(ROOT, "models", "amiro"), path)
    man = {k: v for k, v in _manifest(path).items() if k != "latent_bounds"}
    man["format_version"] = 2
    man["model_id"] = compute_model_id(man["files"])
    _write_manifest(path, man)
    bundle = Bundle.load(path)
    assert bundle.latent_bounds is None
    eng = FusionEngine(bundle)
    dz = bundle.latent_dim
    own = eng.merge(None, Belief("t", np.zeros(dz, np.float32), np.zeros(dz, np.float32),
                                 {"camera": Slot(1.0, "a")}))[0]
    snap = _snapshot(own)
    for slots in ({"lidar": Slot(2.0, "m")}, {m: Slot(2.0, "m") for m in bundle.modalities}):
        evil = Belief("t", np.full(dz, 3e38, np.float32), np.zeros(dz, np.float32), slots)
        for target in (None, own):
            with pytest.raises(FusionError) as info:
                eng.merge(target, evil)
            assert info.value.reason == DropReason.NON_FINITE
    assert _unchanged(own, snap)
