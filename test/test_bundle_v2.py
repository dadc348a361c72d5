"""Bundle format v2: merged chain graphs vs the per-network path, IOBinding, version refusal, the torch-free rebuild
(``export --from-bundle``), re-export from a saved checkpoint, output validation and ``bench chain``."""
import json
import os
import shutil

import numpy as np
import pytest

from linear_bundle import make_linear_bundle
from m2vae_fusion.cli import main
from m2vae_fusion.core.bundle import Bundle, FORMAT_VERSION, sha256_file
from m2vae_fusion.core.fusion import Belief, FusionEngine, FusionError, Slot
from m2vae_fusion.core.reasons import DropReason
from m2vae_fusion.errors import BundleError
from m2vae_fusion.training import export as ex

D = 4
MODS = ("camera", "lidar", "reflectance")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A torch export (random weights, D* = Dz = 10) with its checkpoint saved beside the bundle."""
    out = str(tmp_path_factory.mktemp("v2") / "untrained")
    ex.export_untrained(out, seed=3, checkpoint="beside")
    return out


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    return make_linear_bundle(str(tmp_path_factory.mktemp("lin") / "b"), D, D, seed=2, drift=0.05)


def _manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def _scenarios(engine, rng, dim):
    """Beliefs reached by observations in every order, peer merges and re-encodings; returns a list of
    (name, mean, log_variance, probabilities)."""
    out = []
    f = {m: rng.normal(0, 1.5, dim).astype(np.float32) for m in MODS}
    b = None
    for k, m in enumerate(("lidar", "camera", "reflectance", "camera")):
        b = engine.observe(b, "t", m, f[m] * (1 + k), float(k + 1), "a")
        out.append((f"observe {m}", b.mean, b.log_variance, engine.classify(b)))
    peer = engine.observe(None, "t", "reflectance", f["reflectance"], 9.0, "p")
    peer = engine.observe(peer, "t", "lidar", f["lidar"], 9.5, "p")
    mine = engine.observe(None, "t", "camera", f["camera"], 1.0, "a")
    merged, changed = engine.merge(mine, peer)
    assert changed
    out.append(("merge", merged.mean, merged.log_variance, engine.classify(merged)))
    r = engine.reencode(b)
    out.append(("reencode", r.mean, r.log_variance, engine.classify(r)))
    return out


@pytest.mark.parametrize("which", ["linear", "untrained"])
def test_chain_path_equals_per_network_path(which, drifting, untrained):
    """The engine's chain graphs with IOBinding give the per-network path's latents and probabilities."""
    path = drifting if which == "linear" else untrained
    bundle = Bundle.load(path)
    dim = bundle.feature_dim
    a = _scenarios(FusionEngine(bundle, chains=True), np.random.default_rng(0), dim)
    b = _scenarios(FusionEngine(Bundle.load(path), chains=False), np.random.default_rng(0), dim)
    worst = 0.0
    for (name, m1, v1, p1), (_, m2, v2, p2) in zip(a, b):
        for x, y in ((m1, m2), (v1, v2), (p1, p2)):
            worst = max(worst, float(np.max(np.abs(x - y))))
    assert worst <= 1e-5, worst
    # batched primitives (eval) too: z_diff after 3 steps on a batch of 9 (not an IOBinding batch size)
    z = np.random.default_rng(1).normal(size=(9, bundle.latent_dim)).astype(np.float32)
    d_chain = FusionEngine(bundle).z_diff_batch(z, ("camera", "reflectance"), 3)
    d_nets = FusionEngine(bundle, chains=False).z_diff_batch(z, ("camera", "reflectance"), 3)
    assert np.allclose(d_chain, d_nets, atol=1e-5) and np.all(d_chain > 0)


def test_iobinding_equals_plain_run(untrained):
    bundle = Bundle.load(untrained)
    rng = np.random.default_rng(4)
    for n in (1, 2, 5):
        z = rng.normal(size=(n, bundle.latent_dim)).astype(np.float32)
        bound = bundle.decode_slots(z, ["camera", "reflectance"])
        plain = bundle.decode_slots(z, ["camera", "reflectance"], bind=False)
        assert sorted(bound) == ["camera", "reflectance"]
        for m in bound:
            assert bound[m].shape == (n, bundle.feature_dim)
            np.testing.assert_array_equal(bound[m], plain[m])
            np.testing.assert_allclose(bound[m], bundle.decode(m, z), atol=1e-6)
        feats = {m: rng.normal(size=(n, bundle.feature_dim)).astype(np.float32) for m in MODS}
        mean, logvar, probs = bundle.encode_slots(feats)
        mean2, logvar2, probs2 = bundle.encode_slots(feats, bind=False)
        np.testing.assert_array_equal(mean, mean2)
        np.testing.assert_array_equal(probs, probs2)
        np.testing.assert_allclose(probs, bundle.classify(bundle.encode_subset(feats)[0]), atol=1e-6)
    # the pre-allocated buffers are reused: a returned array is not overwritten by the next run
    z1 = np.ones((1, bundle.latent_dim), np.float32)
    first = bundle.decode_slots(z1, ["lidar"])["lidar"].copy()
    kept = bundle.decode_slots(z1, ["lidar"])["lidar"]
    bundle.decode_slots(-z1, ["lidar"])
    np.testing.assert_array_equal(kept, first)
    with pytest.raises(ValueError, match="shape"):
        bundle.decode_slots(np.zeros((1, bundle.latent_dim + 1), np.float32), ["lidar"])


def test_unknown_and_v1_format_refused(tmp_path, capsys):
    v1 = make_linear_bundle(str(tmp_path / "v1"), D, D, format_version=1)
    with pytest.raises(BundleError) as info:
        Bundle.load(v1)
    msg = str(info.value)
    assert "manifest.json" in msg and "format_version 1" in msg
    assert f"m2vae-fusion export --from-bundle {v1} --out {v1}" in msg
    v2 = make_linear_bundle(str(tmp_path / "v2"), D, D)
    man = _manifest(v2)
    man["format_version"] = FORMAT_VERSION + 1
    with open(os.path.join(v2, "manifest.json"), "w") as f:
        json.dump(man, f)
    with pytest.raises(BundleError, match=r"manifest\.json: unknown format_version 4"):
        Bundle.load(v2)
    assert main(["verify", v2]) == 2
    assert "unknown format_version" in capsys.readouterr().err
    man["format_version"] = 2
    man["objective"] = "tvae"  # not one of core.bundle.OBJECTIVES (issue 11 added mvae)
    with open(os.path.join(v2, "manifest.json"), "w") as f:
        json.dump(man, f)
    with pytest.raises(BundleError, match="objective 'tvae'"):
        Bundle.load(v2)


def test_rebuild_command_upgrades_v1_in_place(tmp_path, capsys):
    v1 = make_linear_bundle(str(tmp_path / "b"), D, D, seed=5, format_version=1)
    before = _manifest(v1)
    nets = {n: sha256_file(os.path.join(v1, n)) for n in before["files"] if n.endswith(".onnx")}
    assert main(["export", "--from-bundle", v1, "--out", v1]) == 0
    assert "format_version 2" in capsys.readouterr().out
    after = _manifest(v1)
    assert after["format_version"] == 2 and after["objective"] == "m2vae"
    assert after["rebuilt"]["from_format_version"] == 1 and after["rebuilt"]["from_model_id"] == before["model_id"]
    for n, digest in nets.items():  # the networks are kept byte for byte: same latent space
        assert after["files"][n] == digest
    assert len(after["chains"]["decode"]) == len(after["chains"]["encode"]) == 7
    assert after["model_id"] != before["model_id"]
    assert main(["verify", v1]) == 0
    out = capsys.readouterr().out
    assert "chains vs per-network path now" in out and "format_version 2" in out
    # a second rebuild (v2 → v2, into another directory) is byte-identical: same model id
    again = str(tmp_path / "again")
    assert main(["export", "--from-bundle", v1, "--out", again]) == 0
    assert _manifest(again)["model_id"] == after["model_id"]
    Bundle.load(again)


def test_rebuild_refuses_changed_network_file(tmp_path, capsys):
    v1 = make_linear_bundle(str(tmp_path / "b"), D, D, format_version=1)
    with open(os.path.join(v1, "m2vae_encoder_lidar.onnx"), "ab") as f:
        f.write(b"\0")
    assert main(["export", "--from-bundle", v1, "--out", str(tmp_path / "out")]) == 1
    assert "m2vae_encoder_lidar.onnx" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp_path, "out", "manifest.json"))


def test_verify_detects_a_changed_chain(tmp_path, capsys):
    """A chain graph replaced by another valid graph (sums and probes re-made to match) fails the live parity."""
    path = make_linear_bundle(str(tmp_path / "b"), D, D, seed=6)
    man = _manifest(path)
    victim = man["chains"]["decode"]["lidar"]
    shutil.copyfile(os.path.join(path, man["chains"]["decode"]["camera"]), os.path.join(path, "tmp.onnx"))
    import onnx
    model = onnx.load(os.path.join(path, "tmp.onnx"))
    model.graph.output[0].name = "lidar"
    for node in model.graph.node:
        node.output[:] = ["lidar" if o == "camera" else o for o in node.output]
    onnx.save(model, os.path.join(path, victim))
    os.remove(os.path.join(path, "tmp.onnx"))
    probes = dict(np.load(os.path.join(path, "probes.npz")))
    probes[f"{victim}:lidar"] = ex.run_onnx(os.path.join(path, victim), {"z": probes[f"{victim}:z"]})["lidar"]
    np.savez(os.path.join(path, "probes.npz"), **probes)
    for n in (victim, "probes.npz"):
        man["files"][n] = sha256_file(os.path.join(path, n))
    man["model_id"] = ex.compute_model_id(man["files"])
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(man, f)
    assert main(["verify", path]) == 1
    err = capsys.readouterr().err
    assert victim in err and "per-network path" in err


def test_export_from_saved_checkpoint(untrained, tmp_path, capsys):
    """The torch export saved its networks beside the bundle; export --from-checkpoint re-exports them (no
    retraining) into the same networks: identical ONNX outputs, same model id."""
    man = _manifest(untrained)
    ck = os.path.normpath(os.path.join(untrained, man["checkpoint"]["file"]))
    assert ck == untrained + ".torch.pt" and sha256_file(ck) == man["checkpoint"]["sha256"]
    assert not any(n.endswith(".pt") for n in os.listdir(untrained))  # outside the bundle: the bundle stays small
    out = str(tmp_path / "re")
    assert main(["export", "--from-checkpoint", ck, "--out", out]) == 0
    capsys.readouterr()
    again = _manifest(out)
    assert again["format_version"] == 2 and os.path.isfile(out + ".torch.pt")
    x = np.random.default_rng(0).uniform(size=(3, 3, 64, 64)).astype(np.float32)
    a, b = Bundle.load(untrained), Bundle.load(out)
    np.testing.assert_allclose(a.encode_feature("camera", x)[0], b.encode_feature("camera", x)[0], atol=1e-6)
    assert again["model_id"] == man["model_id"]
    assert main(["export", "--from-checkpoint", str(tmp_path / "nope.pt"), "--out", out]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_non_finite_chain_output_raises(tmp_path):
    """Finite but extreme features overflow the linear subset encoder: the engine refuses the output."""
    bundle = Bundle.load(make_linear_bundle(str(tmp_path / "b"), D, D, seed=7))
    for chains in (True, False):
        eng = FusionEngine(bundle, chains=chains)
        with pytest.raises(FusionError, match="non-finite") as info:
            eng.observe(None, "t", "camera", np.full(D, 3e38, np.float32), 1.0, "a")
        assert info.value.reason == DropReason.NON_FINITE
        huge = Belief("t", np.full(D, 3e38, np.float32), np.zeros(D, np.float32), {"lidar": Slot(2.0, "p")})
        own = eng.observe(None, "t", "camera", np.ones(D, np.float32), 1.0, "a")
        with pytest.raises(FusionError) as info:
            eng.merge(own, huge)
        assert info.value.reason == DropReason.NON_FINITE
    assert FusionError("x").reason == DropReason.FUSION


def test_bench_chain_counts_runs_and_agrees(drifting, capsys):
    from m2vae_fusion.benchmarks.chain import format_table, measure

    res = measure(drifting, repeats=5, warmup=1)
    for kind, row in res["kinds"].items():
        assert row["chain"]["session_runs"] < row["per_network"]["session_runs"], kind
        assert row["max_abs_diff_probabilities"] <= 1e-5
        assert row["chain"]["fusion_ms"]["n"] == 5
    assert res["kinds"]["camera"]["chain"]["session_runs"] == 3  # β-VAE encoder, decode, encode → head
    assert res["kinds"]["peer"]["chain"]["session_runs"] == 2  # decode both latents (N = 2), encode → head
    assert "chain graphs + IOBinding" in format_table(res)


def test_bundle_without_head_has_chains_without_probabilities(tmp_path, capsys):
    path = make_linear_bundle(str(tmp_path / "nohead"), D, D, seed=8, with_head=False)
    man = _manifest(path)
    assert man["class_names"] is None and man["networks"]["head"] is None and len(man["chains"]["encode"]) == 7
    bundle = Bundle.load(path)
    feats = {"camera": np.ones((1, D), np.float32), "lidar": np.zeros((1, D), np.float32)}
    mean, logvar, probs = bundle.encode_slots(feats)
    assert probs is None and mean.shape == (1, D)
    np.testing.assert_allclose(mean, bundle.encode_subset(feats)[0], atol=1e-6)
    eng = FusionEngine(bundle)
    b = eng.observe(None, "t", "camera", np.ones(D, np.float32), 1.0, "a")
    b = eng.observe(b, "t", "lidar", np.zeros(D, np.float32), 2.0, "a")
    np.testing.assert_allclose(b.mean, mean[0], atol=1e-5)  # exact inverse decoders: same as encoding both
    assert eng.classify(b) is None
    assert main(["verify", path]) == 0
