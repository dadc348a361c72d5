"""Model bundle export (docs/formats.md): manifest schema, sums, model id, ONNX/torch parity, verify exit codes."""
import json
import os

import numpy as np
import pytest

from m2vae_fusion.cli import main
from m2vae_fusion.training import export as ex

MODS = ["camera", "lidar", "reflectance"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle") / "untrained")
    assert main(["export", "--untrained", "--out", out, "--seed", "1"]) == 0
    return out


def _manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def test_manifest_schema(bundle):
    m = _manifest(bundle)
    assert m["format"] == "m2vae_fusion.bundle" and m["format_version"] == 2 and m["objective"] == "m2vae"
    assert m["modalities"] == MODS
    assert m["inputs"]["camera"]["shape"] == [3, 64, 64]
    assert m["inputs"]["lidar"]["shape"] == [1, 667]
    assert m["inputs"]["reflectance"]["shape"] == [16]
    assert m["inputs"]["lidar"]["preprocessing"]["range_max"] == pytest.approx(5.6)
    assert all(m["inputs"][k]["dtype"] == "float32" for k in MODS)
    assert m["feature_dim"] == 10 and m["latent_dim"] == 10
    assert m["subsets"] == [["camera"], ["lidar"], ["reflectance"], ["camera", "lidar"], ["camera", "reflectance"],
                            ["lidar", "reflectance"], ["camera", "lidar", "reflectance"]]
    assert m["class_names"][0] == "red_cylinder_matte" and m["class_names"][7] == "green_cube_shiny"
    assert len(m["class_names"]) == 8
    nets = m["networks"]
    assert nets["subset_encoder"]["camera+lidar"] == "m2vae_encoder_camera+lidar.onnx"
    assert nets["betavae_encoder"]["lidar"] == "betavae_lidar_encoder.onnx"
    assert nets["decoder"]["reflectance"] == "m2vae_decoder_reflectance.onnx"
    assert nets["head"] == "head.onnx"
    assert m["chains"]["decode"]["camera+lidar"] == "chain_decode_camera+lidar.onnx"
    assert m["chains"]["encode"]["camera+lidar+reflectance"] == "chain_encode_camera+lidar+reflectance.onnx"
    assert sorted(m["chains"]["encode"]) == sorted(nets["subset_encoder"]) == sorted(m["chains"]["decode"])
    # β-VAE enc/dec, subset encoders, decoders, head, 7 decode + 7 encode chains, probes
    assert len(m["files"]) == 3 * 2 + 7 + 3 + 1 + 14 + 1
    assert m["checkpoint"] is None  # untrained: the seed reproduces the weights
    assert m["probes"] == "probes.npz" and "probes.npz" in m["files"]
    assert m["training"]["config"]["untrained"] is True
    assert m["created"].endswith("Z")


def test_sums_and_model_id(bundle):
    m = _manifest(bundle)
    for name, digest in m["files"].items():
        assert ex.sha256_file(os.path.join(bundle, name)) == digest
    assert m["model_id"] == ex.compute_model_id(m["files"])
    assert len(m["model_id"]) == 16
    # model id = first 16 hex of sha256 over sorted "file:sha256" lines
    import hashlib
    text = "".join(f"{k}:{m['files'][k]}\n" for k in sorted(m["files"]))
    assert m["model_id"] == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_onnx_io_and_parity(bundle):
    """ONNX files have the documented input/output names, a dynamic batch axis and match the stored torch outputs."""
    import onnx
    m = _manifest(bundle)
    model = onnx.load(os.path.join(bundle, "m2vae_encoder_camera+reflectance.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["camera", "reflectance"]
    assert [o.name for o in model.graph.output] == ["mean", "log_variance"]
    probes = dict(np.load(os.path.join(bundle, "probes.npz")))
    diffs = ex.check_probe_parity(bundle, m, probes)
    assert len(diffs) == 17 + 14 and max(diffs.values()) <= 1e-4
    # batch axis is dynamic: 7 samples through the camera encoder
    out = ex.run_onnx(os.path.join(bundle, "betavae_camera_encoder.onnx"),
                      {"x": np.random.default_rng(0).uniform(size=(7, 3, 64, 64))})
    assert out["mean"].shape == (7, 10) and out["log_variance"].shape == (7, 10)
    dec = ex.run_onnx(os.path.join(bundle, "betavae_lidar_decoder.onnx"), {"z": np.zeros((3, 10))})
    assert dec["x"].shape == (3, 1, 667) and dec["x"].min() >= 0 and dec["x"].max() <= 1
    head = ex.run_onnx(os.path.join(bundle, "head.onnx"), {"z": np.zeros((2, 10))})
    np.testing.assert_allclose(head["probabilities"].sum(1), 1.0, atol=1e-5)


def test_same_seed_same_model_id(bundle, tmp_path):
    out = str(tmp_path / "again")
    ex.export_untrained(out, seed=1)
    assert _manifest(out)["model_id"] == _manifest(bundle)["model_id"]
    ex.export_untrained(out, seed=2)  # re-export over an existing bundle replaces it
    assert _manifest(out)["model_id"] != _manifest(bundle)["model_id"]
    assert main(["verify", out]) == 0


def test_export_fails_on_parity(monkeypatch, tmp_path):
    """A parity failure stops the export before a manifest is written (the directory is not taken for a bundle)."""
    monkeypatch.setattr(ex, "PARITY_TOL", -1.0)
    out = tmp_path / "b"
    with pytest.raises(ex.ParityError, match=r"\.onnx.*tolerance"):
        ex.export_untrained(str(out), seed=0)
    assert not (out / "manifest.json").exists()


def test_verify_detects_changed_file(bundle, tmp_path, capsys):
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(bundle, bad)
    with open(os.path.join(bad, "m2vae_decoder_lidar.onnx"), "ab") as f:
        f.write(b"\0")
    assert main(["verify", bad]) == 1
    assert "m2vae_decoder_lidar.onnx" in capsys.readouterr().err


def test_verify_detects_probe_mismatch(bundle, tmp_path, capsys):
    """Probes edited and the manifest re-summed: sums pass, parity fails, naming the network file."""
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(bundle, bad)
    probes = dict(np.load(os.path.join(bad, "probes.npz")))
    probes["head.onnx:probabilities"] = probes["head.onnx:probabilities"] + 0.01
    np.savez(os.path.join(bad, "probes.npz"), **probes)
    m = _manifest(bad)
    m["files"]["probes.npz"] = ex.sha256_file(os.path.join(bad, "probes.npz"))
    m["model_id"] = ex.compute_model_id(m["files"])
    with open(os.path.join(bad, "manifest.json"), "w") as f:
        json.dump(m, f)
    assert main(["verify", bad]) == 1
    assert "head.onnx" in capsys.readouterr().err


def test_verify_missing_file_and_not_a_bundle(bundle, tmp_path, capsys):
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(bundle, bad)
    os.remove(os.path.join(bad, "m2vae_encoder_lidar.onnx"))
    assert main(["verify", bad]) == 1
    assert "m2vae_encoder_lidar.onnx" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    with open(os.path.join(bad, "manifest.json"), "w") as f:
        f.write("{not json")
    assert main(["verify", bad]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_export_rejects_bad_sizes(tmp_path, capsys):
    assert main(["export", "--untrained", "--out", str(tmp_path / "b"), "--latent-dim", "0"]) == 2
    assert "--latent-dim" in capsys.readouterr().err
