"""The data set command and the shard format of docs/formats.md (real PyBullet, no mocks)."""
import hashlib
import json
import os

import numpy as np
import pytest

from m2vae_fusion.cli import main
from m2vae_fusion.data import shards
from m2vae_fusion.data.check import OTHER_MAX, OWN_MIN
from m2vae_fusion.errors import UserError
from m2vae_fusion.sim.generate import generate_shard


def _files(d):
    return {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() for f in sorted(os.listdir(d))}


def _cli(capsys, *argv):
    code = main(["dataset", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("m2vae-fusion dataset: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ds") / "small")
    assert main(["dataset", "--world", "easy", "--out", d, "--samples", "60", "--seed", "3", "--shard-size", "25",
                 "--workers", "1", "--no-progress"]) == 0
    return d


def test_layout_metadata_and_arrays(small):
    meta = shards.read_metadata(small)
    assert meta["format"] == "m2vae_fusion.dataset" and meta["format_version"] == 1 and meta["source"] == "sim"
    assert meta["seed"] == 3 and meta["modalities"] == ["camera", "lidar", "reflectance"]
    assert meta["splits"] == {"train": 48, "val": 6, "test": 6}
    assert [e["file"] for e in meta["shards"]] == ["train-00000.npz", "train-00001.npz", "val-00000.npz",
                                                   "test-00000.npz"]
    assert [e["samples"] for e in meta["shards"]] == [25, 23, 6, 6]
    for e in meta["shards"]:
        assert e["sha256"] == hashlib.sha256(open(os.path.join(small, e["file"]), "rb").read()).hexdigest()
    s = meta["sensors"]
    assert (s["camera"]["width"], s["camera"]["height"]) == (64, 64)
    assert s["lidar"]["beams"] == 667 and s["lidar"]["range_max"] == 5.6 and s["reflectance"]["beams"] == 8
    assert set(s["reflectance"]) >= {"range_max", "intensity_max"}
    train = shards.load_split(small, "train")
    assert train["camera"].shape == (48, 64, 64, 3) and train["camera"].dtype == np.uint8
    assert train["lidar"].shape == (48, 667) and train["lidar"].dtype == np.float32
    assert train["reflectance"].shape == (48, 8, 2) and train["reflectance"].dtype == np.float32
    assert train["present"].dtype == np.bool_ and train["present"].shape == (48, 3)
    for k in ("label", "colour", "shape", "material"):
        assert train[k].dtype == np.int64 and train[k].shape == (48,)
    assert set(np.unique(train["label"])) <= set(range(8))
    assert np.isposinf(train["lidar"]).any()  # open space beyond 5.6 m reads +inf (REP 117)


def test_preprocessing_accepts_the_data(small):
    import m2vae_fusion.core.preprocess as pre
    meta = shards.read_metadata(small)
    test = shards.load_split(small, "test")
    cam = pre.preprocess_camera(test["camera"], meta["sensors"]["camera"])
    lid = pre.preprocess_lidar(test["lidar"], meta["sensors"]["lidar"])
    ref = pre.preprocess_reflectance(test["reflectance"], meta["sensors"]["reflectance"])
    assert cam.shape == (6, 3, 64, 64) and lid.shape == (6, 1, 667) and ref.shape == (6, 16)
    assert lid.max() <= 1.0 and lid.min() >= 0.0 and ref.max() <= 1.5 and ref.min() >= 0.0


def test_same_seed_same_bytes_whatever_the_workers(small, tmp_path, capsys):
    other = str(tmp_path / "again")
    code, out, _ = _cli(capsys, "--world", "easy", "--out", other, "--samples", "60", "--seed", "3",
                        "--shard-size", "25", "--workers", "2")
    assert code == 0 and "samples/s" in out
    assert _files(other) == _files(small)
    diff = str(tmp_path / "seed4")
    assert _cli(capsys, "--world", "easy", "--out", diff, "--samples", "60", "--seed", "4", "--shard-size", "25",
                "--workers", "1")[0] == 0
    assert _files(diff)["train-00000.npz"] != _files(small)["train-00000.npz"]


@pytest.mark.parametrize("args, needle", [
    (["--samples", "0"], "--samples must be positive"),
    (["--samples", "-5"], "--samples must be positive"),
    (["--samples", "10", "--val-fraction", "0.6", "--test-fraction", "0.5"], "no training samples"),
])
def test_bad_numbers_exit_2(tmp_path, capsys, args, needle):
    code, _, err = _cli(capsys, "--out", str(tmp_path / "x"), *args)
    assert code == 2 and needle in _error_line(err)


def test_out_must_be_empty_or_overwritten_and_writable(small, tmp_path, capsys):
    code, _, err = _cli(capsys, "--out", small, "--samples", "5")
    assert code == 2 and "not empty" in _error_line(err) and small in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _cli(capsys, "--out", str(blocker / "sub"), "--samples", "5")
    assert code == 2 and str(blocker / "sub") in _error_line(err)
    code, _, err = _cli(capsys, "--out", str(blocker), "--samples", "5")
    assert code == 2 and "not a directory" in _error_line(err)
    target = tmp_path / "over"
    target.mkdir()
    (target / "train-00007.npz").write_bytes(b"stale")
    code, _, _ = _cli(capsys, "--world", "easy", "--out", str(target), "--samples", "5", "--seed", "1",
                      "--overwrite")
    assert code == 0 and not (target / "train-00007.npz").exists()
    assert sum(shards.read_metadata(str(target))["splits"].values()) == 5


def test_check_refuses_missing_and_corrupt_data(small, tmp_path, capsys):
    code, _, err = _cli(capsys, "--check", str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in _error_line(err)
    (tmp_path / "incomplete").mkdir()
    code, _, err = _cli(capsys, "--check", str(tmp_path / "incomplete"))
    assert code == 2 and "metadata.json is missing" in _error_line(err)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(small):
        (bad / f).write_bytes(open(os.path.join(small, f), "rb").read())
    data = bytearray((bad / "train-00001.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "train-00001.npz").write_bytes(bytes(data))
    code, _, err = _cli(capsys, "--check", str(bad))
    assert code == 2 and "train-00001.npz" in _error_line(err) and "corrupt" in err
    with pytest.raises(UserError, match="train-00001.npz"):
        shards.load_split(str(bad), "train")
    assert shards.load_split(str(bad), "val")["label"].shape == (6,)  # other splits still read
    os.unlink(bad / "val-00000.npz")
    with pytest.raises(UserError, match="val-00000.npz is missing"):
        shards.load_split(str(bad), "val")
    (bad / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="metadata.json"):
        shards.read_metadata(str(bad))


def test_interrupted_run_leaves_nothing_readable(tmp_path):
    out = str(tmp_path / "cut")
    good = generate_shard(1, "train", 0, 4)

    def parts():
        yield "train", 0, good
        yield "train", 1, good
        raise KeyboardInterrupt  # e.g. Ctrl-C while the third shard is simulated

    with pytest.raises(KeyboardInterrupt):
        shards.write_dataset(out, parts(), source="sim", seed=1, sensors={})
    left = sorted(os.listdir(out))
    assert left == ["train-00000.npz", "train-00001.npz"]  # complete shards, no temporary files, no metadata
    with pytest.raises(UserError, match="not a complete data set"):
        shards.load_split(out, "train")

    broken = dict(good, lidar=good["lidar"].astype(np.float64))  # a shard that fails while being written
    with pytest.raises(UserError, match="train-00000.npz"):
        shards.write_dataset(str(tmp_path / "bad"), [("train", 0, broken)], source="sim", seed=1, sensors={})
    assert os.listdir(tmp_path / "bad") == []


def test_separability_thresholds_on_a_small_data_set(tmp_path, capsys):
    """The paper's single-sensor setup on 1000 samples: own attribute >= 98 %, others <= 70 %, all three >= 98 %."""
    d = str(tmp_path / "sep")
    assert _cli(capsys, "--world", "easy", "--out", d, "--samples", "1000", "--seed", "11", "--test-fraction", "0.2",
                "--val-fraction", "0.0")[0] == 0
    js = str(tmp_path / "check.json")
    code, out, _ = _cli(capsys, "--check", d, "--json", js)
    result = json.load(open(js))
    own = {"camera": "colour", "lidar": "shape", "reflectance": "material"}
    for sensor, row in result["per_sensor"].items():
        for attribute, acc in row.items():
            if own[sensor] == attribute:
                assert acc >= OWN_MIN, (sensor, attribute, acc)
            else:
                assert acc <= OTHER_MAX, (sensor, attribute, acc)
    assert result["all_sensors_class_accuracy"] >= 0.98
    assert result["stress"]["camera_object_crop"]["shape"] <= OTHER_MAX
    assert code == 0 and "PASS" in out and result["test_samples"] == 200


def test_terminated_cli_run_leaves_no_valid_data_set(tmp_path, capsys):
    """SIGTERM (like Ctrl-C) in the middle of a run: exit 130, finished shards stay, no temporary file and no
    metadata.json, so --check refuses the directory."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "m2vae_fusion", "dataset", "--out", str(out), "--samples", "4000",
                             "--shard-size", "100", "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and any(p.suffix == ".npz" for p in out.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    left = sorted(p.name for p in out.iterdir())
    assert left and all(n.startswith("train-") and n.endswith(".npz") for n in left), left
    assert len(left) < 36
    code, _, err = _cli(capsys, "--check", str(out))
    assert code == 2 and "metadata.json is missing" in _error_line(err)


#: sha256 of the shards of ``dataset --out D --samples 20 --seed 5 --shard-size 10 --workers 1`` written by the code
#: before the hard world existed (commit 60f0506): the easy world must stay byte-identical.
EASY_SHARDS_BEFORE_HARD_WORLD = {
    "test-00000.npz": "5a0504f5b09cbeea46cf446e7f26f2d6f749f42f841ed3c07b422bf30051fd65",
    "train-00000.npz": "ffddc958ed6b88f786ad288c5e091d34d8bbc75fae9e4d2c8e411e4259bac7e6",
    "train-00001.npz": "05ff393a094f92a129b43bc7bdbb14dad12148c71edf69a117e29dfed2432b44",
    "val-00000.npz": "774ec2b9882d84a3928083e0bdfbd787d1ca1fa310203526daaa3922d6c17373",
}


def test_easy_world_is_byte_identical_to_before(tmp_path, capsys):
    d = str(tmp_path / "easy")
    assert _cli(capsys, "--world", "easy", "--out", d, "--samples", "20", "--seed", "5", "--shard-size", "10",
                "--workers", "1")[0] == 0
    files = _files(d)
    assert {k: v for k, v in files.items() if k.endswith(".npz")} == EASY_SHARDS_BEFORE_HARD_WORLD
    meta = json.load(open(os.path.join(d, "metadata.json")))
    assert "world" not in meta and shards.world_of(meta) == "easy" and len(meta["class_names"]) == 8


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ds") / "hard")
    assert main(["dataset", "--out", d, "--samples", "150", "--seed", "4", "--views", "3", "--shard-size", "60",
                 "--test-fraction", "0.4", "--val-fraction", "0", "--workers", "2", "--no-progress"]) == 0
    return d


def test_hard_world_is_the_default_with_views_and_target_positions(hard):
    from m2vae_fusion.data.classes import WORLDS

    meta = shards.read_metadata(hard)
    assert meta["world"] == "hard" and meta["views"] == 3
    cs = WORLDS["hard"]
    assert meta["class_names"] == cs.class_names and len(meta["class_names"]) == 27
    assert meta["attributes"]["shape"] == ["cylinder", "hexagonal_prism", "rounded_box"]
    assert [c["id"] for c in meta["classes"]] == list(range(27))
    assert all(meta["class_names"][c["id"]] == "_".join([meta["attributes"]["colour"][c["colour"]],
                                                         meta["attributes"]["shape"][c["shape"]],
                                                         meta["attributes"]["material"][c["material"]]])
               for c in meta["classes"])
    cam = meta["sensors"]["camera"]
    assert len(cam["K"]) == 9 and cam["crop"]["enabled"] and meta["sensors"]["lidar"]["crop"]["enabled"]
    tr = shards.load_split(hard, "train")
    n = len(tr["label"])
    assert tr["camera"].shape == (n, 64, 64, 3) and tr["target_position"].shape == (n, 3)
    assert tr["target_position"].dtype == np.float32 and np.all(np.isfinite(tr["target_position"]))
    assert np.all(tr["target_position"][:, 0] > 0.05)  # in front of the robot
    assert np.array_equal(tr["label"], (tr["colour"] * 3 + tr["shape"]) * 3 + tr["material"])
    ids, counts = np.unique(tr["object_id"], return_counts=True)
    assert counts.max() == 3 and len(ids) >= n // 3
    for i in ids:  # all views of an object share its class
        assert len(set(tr["label"][tr["object_id"] == i])) == 1
    te = shards.load_split(hard, "test")
    assert not set(te["object_id"]) & set(tr["object_id"])  # no object in two splits


def test_hard_world_same_seed_same_bytes(hard, tmp_path, capsys):
    d = str(tmp_path / "again")
    assert _cli(capsys, "--out", d, "--samples", "150", "--seed", "4", "--views", "3", "--shard-size", "60",
                "--test-fraction", "0.4", "--val-fraction", "0", "--workers", "1")[0] == 0
    assert _files(d) == _files(hard)


def test_views_only_for_the_hard_world(tmp_path, capsys):
    code, _, err = _cli(capsys, "--world", "easy", "--views", "2", "--out", str(tmp_path / "x"), "--samples", "10")
    assert code == 2 and "--views" in _error_line(err)
    code, _, err = _cli(capsys, "--views", "0", "--out", str(tmp_path / "y"), "--samples", "10")
    assert code == 2 and "--views" in _error_line(err)


def test_hard_check_reports_ceilings_and_second_observation(hard, tmp_path, capsys):
    js = str(tmp_path / "check.json")
    code, out, _ = _cli(capsys, "--check", hard, "--json", js)
    result = json.load(open(js))
    assert result["world"] == "hard" and result["thresholds"]["second_observation_min"] == 0.97
    sec = result["second_observation"]
    assert sec["pairs"] == 20 * 3  # 20 test objects, 3 pairs of views each
    for m in ("camera", "lidar", "reflectance"):
        assert 0.0 <= sec[m] <= 1.0 and set(result["per_sensor"][m]) == {"colour", "shape", "material"}
    assert "2nd observation" in out and "target-centred" in out
    assert code == (0 if result["passed"] else 1)
