"""eval v2's in-place chains when a chain diverges (non-finite or refused fused beliefs): counted, not a crash."""
import numpy as np

from linear_bundle import make_linear_bundle
from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.training.evaluate import chain_accuracy


def test_a_diverging_chain_is_counted_wrong_and_the_others_scored(tmp_path):
    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "lin"), 4, 4, seed=3))
    rng = np.random.default_rng(0)
    n_obj, views = 6, 2
    feats = {m: rng.normal(0, 0.5, (n_obj * views, 4)).astype(np.float32) for m in bundle.modalities}
    # object 0: finite features so extreme that the linear subset encoder overflows to inf
    for m in bundle.modalities:
        feats[m][:views] = 3e38
    labels = np.repeat(np.arange(n_obj) % len(bundle.class_names), views)
    groups = [np.arange(o * views, (o + 1) * views) for o in range(n_obj)]
    for sampled in (True, False):
        r = chain_accuracy(bundle, feats, labels, groups, 6, "random", sampled=sampled, seed=1)
        assert r["diverged"] == 1 and r["objects"] == n_obj
        assert 0.0 <= r["in_place"] <= (n_obj - 1) / n_obj
        assert all(np.isfinite(x) for x in r["z_step_median"])
    # without the extreme object nothing diverges
    keep = [g for g in groups[1:]]
    r = chain_accuracy(bundle, feats, labels, keep, 6, "random", sampled=True, seed=1)
    assert r["diverged"] == 0 and r["objects"] == n_obj - 1
