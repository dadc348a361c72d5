"""The bimodal Mixture-of-Gaussians benchmark (FUSION 2019 Sec. IV, V-A, Table I)."""
import json

import numpy as np
import pytest

from m2vae_fusion.cli import main
from m2vae_fusion.training import mog


def test_class_means_share_as_in_the_paper():
    a, b = mog.class_means()
    assert a.shape == (10, 2) and b.shape == (10, 2)
    np.testing.assert_allclose(a[5], a[6])
    np.testing.assert_allclose(a[5], a[7])
    np.testing.assert_allclose(a[0], a[8])
    np.testing.assert_allclose(b[0], b[9])
    assert len({tuple(r) for r in a.round(6)}) == 7  # 10 classes, two shared groups in a
    assert len({tuple(r) for r in b.round(6)}) == 9
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0)  # unit circle
    both = {tuple(np.r_[x, y].round(6)) for x, y in zip(a, b)}
    assert len(both) == 10  # every class separable with both modalities


def test_noise_levels():
    d = mog.make_mog(2000, seed=3)
    ma, mb = mog.class_means()
    assert np.std(d["a"] - ma[d["y"]]) == pytest.approx(0.06, rel=0.05)
    assert np.std(d["b"] - mb[d["y"]]) == pytest.approx(0.1, rel=0.05)
    assert np.bincount(d["y"]).tolist() == [2000] * 10


def test_bench_mog_cli_small(tmp_path, capsys):
    """A short run through the CLI: JSON keys, raw column near the ideal rates (.7 for a, .9 for b, ~1 for ab) and
    an M2VAE that already classifies the joint embedding well after a few epochs."""
    out = tmp_path / "mog.json"
    assert main(["bench", "mog", "--json", str(out), "--epochs", "40", "--samples-per-class", "150"]) == 0
    res = json.loads(out.read_text())
    assert set(res["raw"]) == {"ab", "a", "b"} and set(res["m2vae"]) == {"ab", "a", "b"}
    assert res["raw"]["ab"] > 0.97
    assert 0.62 < res["raw"]["a"] < 0.76
    assert 0.85 < res["raw"]["b"] < 0.95
    assert res["m2vae"]["ab"] > 0.9
    # one classifier, fitted on the ab embeddings only, already works on the unimodal embeddings (coherence)
    assert res["m2vae"]["a"] > 0.4 and res["m2vae"]["b"] > 0.8
    assert "Table I" in capsys.readouterr().out


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "mog", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_bench_registry_skips_missing_modules(monkeypatch):
    """Benchmarks are entries of BENCHMARKS; a module entry whose module is not there is simply not listed."""
    import argparse

    from m2vae_fusion.commands import bench

    monkeypatch.setitem(bench.BENCHMARKS, "nope", "m2vae_fusion.no_such_benchmark_module")
    p = argparse.ArgumentParser()
    bench.configure(p)
    args = p.parse_args(["mog", "--epochs", "3"])
    assert args.epochs == 3 and args._bench_run is bench._mog_run
    with pytest.raises(SystemExit):
        p.parse_args(["nope"])
