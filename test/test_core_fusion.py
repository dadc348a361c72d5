"""The bundle loader and the fusion engine, without ROS, on linear bundles whose behaviour is known exactly."""
import json
import os

import numpy as np
import pytest

from linear_bundle import CLASS_NAMES, make_linear_bundle
from m2vae_fusion.core.bundle import Bundle, compute_model_id
from m2vae_fusion.core.fusion import Belief, BeliefStore, FusionEngine, FusionError, Slot
from m2vae_fusion.errors import BundleError

D = 4


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    return Bundle.load(make_linear_bundle(str(tmp_path_factory.mktemp("exact")), D, D, seed=1))


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    return Bundle.load(make_linear_bundle(str(tmp_path_factory.mktemp("drift")), D, D, seed=1, drift=0.05))


def feat(rng):
    return rng.normal(size=D).astype(np.float32)


def test_bundle_loads_and_reports_layout(exact):
    assert exact.modalities == ("camera", "lidar", "reflectance")
    assert exact.subsets == ("camera", "lidar", "reflectance", "camera+lidar", "camera+reflectance",
                             "lidar+reflectance", "camera+lidar+reflectance")
    assert exact.class_names == tuple(CLASS_NAMES) and exact.has_head
    assert exact.model_id == compute_model_id(exact.manifest["files"])
    assert max(exact.probe_differences().values()) < 1e-6
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    mean, logvar = exact.encode_feature("camera", x)
    assert mean.shape == (2, D) and logvar.shape == (2, D) and mean.dtype == np.float32


def test_bundle_errors_name_the_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(str(tmp_path / "nope"))
    path = make_linear_bundle(str(tmp_path / "b"), D, D)
    victim = os.path.join(path, "m2vae_decoder_lidar.onnx")
    with open(victim, "r+b") as f:
        f.seek(20)
        f.write(b"\x00\x01garbage")
    with pytest.raises(BundleError, match="m2vae_decoder_lidar.onnx"):
        Bundle.load(path)
    # a corrupt file whose sum was updated (hand-edited manifest) is still caught by onnxruntime, naming the file
    with open(os.path.join(path, "manifest.json")) as f:
        man = json.load(f)
    from m2vae_fusion.core.bundle import sha256_file
    man["files"]["m2vae_decoder_lidar.onnx"] = sha256_file(victim)
    man["model_id"] = compute_model_id(man["files"])
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(man, f)
    with pytest.raises(BundleError, match="m2vae_decoder_lidar.onnx"):
        Bundle.load(path)
    os.remove(os.path.join(path, "manifest.json"))
    with pytest.raises(BundleError, match="manifest.json"):
        Bundle.load(path)


def test_in_place_fusion_is_eq18(exact):
    """Eq. 18 with exact inverse decoders: the fused latent is the subset encoder of (decoded slots, new feature)."""
    eng = FusionEngine(exact)
    rng = np.random.default_rng(2)
    fc, fl = feat(rng), feat(rng)
    b1 = eng.observe(None, "t1", "camera", fc, stamp=1.0, agent="a")
    assert b1.modalities(eng.order) == ("camera",) and b1.contributors == ("a",)
    b2 = eng.observe(b1, "t1", "lidar", fl, stamp=2.0, agent="a")
    expect, _ = exact.encode_subset({"camera": exact.decode("camera", b1.mean[None]), "lidar": fl[None]})
    assert np.allclose(b2.mean, expect[0], atol=1e-6)
    assert b2.modalities(eng.order) == ("camera", "lidar") and b2.stamp == 2.0
    assert b1.modalities(eng.order) == ("camera",)  # the input belief is not modified


def test_observation_errors(exact):
    eng = FusionEngine(exact)
    rng = np.random.default_rng(3)
    b = eng.observe(None, "t", "camera", feat(rng), 5.0, "a")
    with pytest.raises(FusionError, match="stale"):
        eng.observe(b, "t", "camera", feat(rng), 4.0, "a")
    with pytest.raises(FusionError, match="values"):
        eng.observe(b, "t", "lidar", np.ones(D + 1), 6.0, "a")
    with pytest.raises(FusionError, match="non-finite"):
        eng.observe(b, "t", "lidar", np.array([np.nan] * D), 6.0, "a")
    with pytest.raises(FusionError, match="unknown modality"):
        eng.observe(b, "t", "sonar", feat(rng), 6.0, "a")


def test_self_merge_moves_no_more_than_one_reencoding(drifting):
    eng = FusionEngine(drifting)
    rng = np.random.default_rng(4)
    b = eng.observe(None, "t", "camera", feat(rng), 1.0, "a")
    b = eng.observe(b, "t", "lidar", feat(rng), 2.0, "a")
    one_step = eng.z_diff(b, 1)
    assert one_step > 0  # the drifting bundle really drifts
    merged, changed = eng.merge(b, b)
    assert not changed and np.linalg.norm(merged.mean - b.mean) <= one_step + 1e-6
    # a copy carrying one newer slot forces a decode → re-encode: still within one re-encoding's z_diff
    newer = Belief("t", b.mean.copy(), b.log_variance.copy(), {**b.slots, "lidar": Slot(3.0, "b")})
    merged, changed = eng.merge(b, newer)
    assert changed and np.linalg.norm(merged.mean - b.mean) <= one_step + 1e-6


def test_peer_merge_takes_union_of_slots(exact):
    eng = FusionEngine(exact)
    rng = np.random.default_rng(5)
    fc, fr = feat(rng), feat(rng)
    mine = eng.observe(None, "t", "camera", fc, 1.0, "a")
    theirs = eng.observe(None, "t", "reflectance", fr, 1.5, "b")
    merged, changed = eng.merge(mine, theirs)
    assert changed
    assert merged.modalities(eng.order) == ("camera", "reflectance") and merged.contributors == ("a", "b")
    direct, _ = exact.encode_subset({"camera": fc[None], "reflectance": fr[None]})
    assert np.allclose(merged.mean, direct[0], atol=1e-5)  # same as observing both oneself
    again, changed = eng.merge(merged, theirs)  # the same information a second time adds nothing
    assert not changed and again is merged
    adopted, changed = eng.merge(None, theirs)
    assert changed and np.array_equal(adopted.mean, theirs.mean)


def test_peer_merge_rejects_bad_latents(exact):
    eng = FusionEngine(exact)
    good = Belief("t", np.zeros(D, np.float32), np.zeros(D, np.float32), {"lidar": Slot(1.0, "b")})
    for bad, msg in [(Belief("t", np.zeros(D + 2), np.zeros(D + 2), good.slots), "values"),
                     (Belief("t", np.full(D, np.inf), np.zeros(D), good.slots), "non-finite"),
                     (Belief("t", np.zeros(D), np.zeros(D), {}), "no modalities"),
                     (Belief("t", np.zeros(D), np.zeros(D), {"sonar": Slot(1.0, "b")}), "unknown")]:
        with pytest.raises(FusionError, match=msg):
            eng.merge(None, bad)
    with pytest.raises(FusionError, match="about"):
        eng.merge(Belief("u", np.zeros(D), np.zeros(D), {"camera": Slot(1, "a")}), good)


def test_z_diff_is_eq21(exact, drifting):
    rng = np.random.default_rng(6)
    z = rng.normal(size=(10, D)).astype(np.float32)
    assert np.max(FusionEngine(exact).z_diff_batch(z, ("camera", "lidar"), 100)) < 1e-4
    d1 = FusionEngine(drifting).z_diff_batch(z, ("camera",), 1)
    assert np.allclose(d1, 0.05 * np.linalg.norm(z, axis=1), rtol=1e-3)


def test_store_ttl_and_bound():
    now = [0.0]
    store = BeliefStore(ttl_s=10.0, max_targets=2, clock=lambda: now[0])
    mk = lambda t: Belief(t, np.zeros(D), np.zeros(D), {"camera": Slot(0, "a")}, updated=now[0])
    store.put(mk("a"))
    now[0] = 1.0
    store.put(mk("b"))
    now[0] = 2.0
    assert store.put(mk("c")) == ["a"] and store.targets() == ["b", "c"] and store.evicted == 1
    now[0] = 11.5
    assert store.get("b") is None and store.get("c") is not None and store.expired == 1
    now[0] = 13.0
    assert store.targets() == [] and store.expired == 2
    store.put(mk("d"))
    assert store.clear() == 1 and len(store) == 0


def test_classify(exact):
    eng = FusionEngine(exact)
    b = eng.observe(None, "t", "camera", np.ones(D, np.float32), 1.0, "a")
    p = eng.classify(b)
    assert p.shape == (len(CLASS_NAMES),) and p.sum() == pytest.approx(1.0, abs=1e-5) and np.all(p >= 0)


def test_bundle_without_head(tmp_path):
    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "nohead"), D, D, with_head=False))
    assert not bundle.has_head and bundle.class_names is None
    assert bundle.classify(np.zeros((1, D), np.float32)) is None


def test_peer_holding_all_own_evidence_is_adopted_exactly(drifting):
    """A peer latent that contains our evidence (same slot stamps and agents) plus more is taken as is: no
    re-encoding, so two agents that exchanged end with identical latents."""
    eng = FusionEngine(drifting)
    rng = np.random.default_rng(7)
    mine = eng.observe(None, "t", "camera", feat(rng), 1.0, "a")
    theirs, _ = eng.merge(None, mine)
    theirs = eng.observe(theirs, "t", "lidar", feat(rng), 2.0, "b")
    merged, changed = eng.merge(mine, theirs)
    assert changed and np.array_equal(merged.mean, theirs.mean)
    assert merged.slots == theirs.slots


def _class_run(engine, reads, dim):
    """Feed class-level observations (attribute index read with p 0.9 of 3, one view each, 2 s apart) through the
    accumulation's class-evidence rule; returns the argmax of the slot's class evidence after each."""
    from types import SimpleNamespace

    f, prec = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    belief, tops = None, []
    for i, v in enumerate(reads):
        ell = np.log(np.where(np.arange(3) == v, 0.9, 0.05)).astype(np.float32)
        slot = engine._accumulate(belief, "lidar", f, prec, 1.0 + 2.0 * i, "a", ell)
        belief = SimpleNamespace(slots={"lidar": slot})
        tops.append(int(np.argmax(slot.class_evidence)))
    return tops


def test_a_run_of_change_supports_survives_tolerance_dissents(exact):
    """Class-level change rule (confirm 4): with tolerance 1 one misread of the new object (read as the old value,
    or as a third one) does not restart its count, so it wins at its 5th observation; with tolerance 0 it does not.
    A burst of 3 misreads followed by good reads never moves the belief."""
    from m2vae_fusion.core.fusion import Accumulation

    dim = exact.feature_dim
    a20 = [0] * 20
    for tol, changed in ((1, True), (0, False)):
        eng = FusionEngine(exact, accumulation=Accumulation(confirm=4, confirm_time=2.0, tolerance=tol))
        for dissent in (0, 2):  # the held value, another value
            tops = _class_run(eng, a20 + [1, 1, dissent, 1, 1], dim)
            assert tops[19] == 0 and tops[23] == 0
            assert (tops[-1] == 1) is changed, (tol, dissent, tops[20:])
    eng = FusionEngine(exact, accumulation=Accumulation(confirm=4, confirm_time=2.0, tolerance=1))
    tops = _class_run(eng, a20 + [1, 1, 1, 0, 0, 1, 1, 0, 0, 0], dim)
    assert all(t == 0 for t in tops), tops
    with pytest.raises(ValueError, match="tolerance"):
        Accumulation(tolerance=-1)
