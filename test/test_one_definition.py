"""One definition each (issue 12): the default bundle path (m2vae_fusion.paths.default_bundle_path), the JSON writer
(m2vae_fusion.files.write_json), the modality tuple (m2vae_fusion.core.modalities.MODALITIES) and the CameraInfo
check (m2vae_fusion.core.messages.camera_info_k)."""
import argparse
import ast
import glob
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from m2vae_fusion import files, paths
from m2vae_fusion.core.messages import camera_info_k
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.core.preprocess import PreprocessError, camera_intrinsics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "m2vae_fusion", "**", "*.py"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "launch", "*.py")) + glob.glob(os.path.join(ROOT, "scripts", "*.py")))


def _rel(path):
    return os.path.relpath(path, ROOT)


# -- default bundle path --------------------------------------------------------------------------------------------
def test_default_bundle_path_is_the_shipped_bundle():
    path = paths.default_bundle_path()
    assert path == paths.share_path("models", paths.DEFAULT_MODEL)
    assert os.path.isfile(os.path.join(path, "manifest.json"))
    assert os.path.realpath(path) == os.path.realpath(os.path.join(ROOT, "models", "amiro"))


def test_no_module_builds_the_default_bundle_path_itself():
    """Only paths.py joins ``models`` with the bundle name; every other module calls default_bundle_path()."""
    offenders = []
    for path in SOURCES:
        if _rel(path) == os.path.join("m2vae_fusion", "paths.py"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "share_path", "join") and any(isinstance(a, ast.Constant) and a.value == "models"
                                                  for a in node.args):
                offenders.append(f"{_rel(path)}:{node.lineno}")
    assert offenders == []


def test_benchmarks_fall_back_to_the_one_default(tmp_path, monkeypatch):
    """With no --model-dir the benchmarks take whatever default_bundle_path() says (looked up when they run)."""
    from m2vae_fusion.benchmarks.latency import _bundle
    from m2vae_fusion.errors import UserError

    fake = tmp_path / "bundle"
    fake.mkdir()
    (fake / "manifest.json").write_text("{}")
    monkeypatch.setattr(paths, "default_bundle_path", lambda: str(fake))
    assert _bundle(argparse.Namespace(model_dir=None)) == (str(fake), "installed")
    monkeypatch.setattr(paths, "default_bundle_path", lambda: str(tmp_path / "none"))
    with pytest.raises(UserError, match="no model bundle in"):
        _bundle(argparse.Namespace(model_dir=None))


# -- the JSON writer ------------------------------------------------------------------------------------------------
def test_write_json_nonfinite_and_numpy_as_the_benchmark_writer_did(tmp_path):
    """NaN and ±inf → null, numpy scalars → numbers, tuples → lists, keys → str; indented, final newline; parent
    directories made; no temporary file left."""
    obj = {"nan": math.nan, "inf": [math.inf, -math.inf], "np": {"f": np.float32(0.5), "i": np.int64(3),
                                                                 "nan": np.float64("nan")},
           "t": (1, 2.5), 7: "seven", "ok": [None, True, "x"]}
    out = tmp_path / "a" / "b" / "r.json"
    files.write_json(str(out), obj)
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.startswith('{\n  "nan": null,')
    assert json.loads(text) == {"nan": None, "inf": [None, None], "np": {"f": 0.5, "i": 3, "nan": None},
                                "t": [1, 2.5], "7": "seven", "ok": [None, True, "x"]}
    assert "NaN" not in text and "Infinity" not in text
    assert os.listdir(out.parent) == ["r.json"]
    # the benchmarks' name for it is the same function
    from m2vae_fusion.benchmarks.common import write_json

    assert write_json is files.write_json


def test_write_json_keep_and_raise(tmp_path):
    out = tmp_path / "r.json"
    files.write_json(str(out), {"x": math.nan, "y": [math.inf]}, nonfinite="keep", indent=None)
    assert out.read_text() == '{"x": NaN, "y": [Infinity]}\n'
    with pytest.raises(ValueError, match="Out of range float"):
        files.write_json(str(out), {"x": math.nan}, nonfinite="raise")
    with pytest.raises(TypeError):
        files.write_json(str(out), {"x": object()})
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        files.write_json(str(out), {}, nonfinite="zero")
    # a failed write keeps the old file as it was and leaves no temporary file
    assert out.read_text() == '{"x": NaN, "y": [Infinity]}\n' and os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize("name", ["amiro", "amiro_reenc", "amiro_easy", "amiro_easy_noreenc"])
def test_manifest_rewritten_byte_for_byte(tmp_path, name):
    """The export's manifest writer (the one JSON writer, numbers kept) writes a shipped manifest back unchanged."""
    from m2vae_fusion.training.export import _write_manifest

    src = os.path.join(ROOT, "models", name, "manifest.json")
    with open(src, encoding="utf-8") as f:
        manifest = json.load(f)
    _write_manifest(str(tmp_path), manifest)
    with open(src, "rb") as f:
        assert (tmp_path / "manifest.json").read_bytes() == f.read()
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_shards_metadata_refuses_nonfinite(tmp_path):
    from m2vae_fusion.data.shards import METADATA, write_metadata

    write_metadata(str(tmp_path), {"a": 1.5})
    assert (tmp_path / METADATA).read_text() == '{\n  "a": 1.5\n}\n'
    with pytest.raises(ValueError):
        write_metadata(str(tmp_path), {"a": math.nan})
    assert json.loads((tmp_path / METADATA).read_text()) == {"a": 1.5}


def test_no_bare_json_dump_of_result_files():
    """Result files, manifests and metadata go through files.write_json; json.dump stays only where a child process
    and its parent exchange a file (the benchmarks' spec and go files, their children's results)."""
    allowed = {os.path.join("m2vae_fusion", "benchmarks", n) for n in
               ("runtime.py", "reliability.py", "children.py", "reliability_children.py")}
    found = []
    for path in SOURCES:
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "dump"
                    and getattr(node.func.value, "id", "") == "json" and _rel(path) not in allowed):
                found.append(f"{_rel(path)}:{node.lineno}")
    assert found == []


# -- modalities -----------------------------------------------------------------------------------------------------
def test_no_second_modality_tuple():
    """No module but core/modalities.py spells the modality list out (benchmarks/reliability.py's host_layout still
    does: that file is being changed on another branch, so its copy is left for that change)."""
    copies = []
    skip = {os.path.join("m2vae_fusion", "core", "modalities.py"), os.path.join("m2vae_fusion", "benchmarks",
                                                                              "reliability.py")}
    for path in SOURCES:
        if _rel(path) in skip:
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.Tuple, ast.List)) and [getattr(e, "value", None) for e in node.elts] == \
                    list(MODALITIES):
                copies.append(f"{_rel(path)}:{node.lineno}")
    assert copies == []
    from m2vae_fusion.benchmarks.runtime import OWN

    assert OWN is MODALITIES


# -- CameraInfo -----------------------------------------------------------------------------------------------------
def _info(k, width=320, height=240):
    return SimpleNamespace(k=list(k), width=width, height=height)


K = [200.0, 0.0, 160.0, 0.0, 210.0, 120.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("k,ok", [
    (K, True), ([0.0] * 9, False), (K[:8], False), (K + [1.0], False), ([math.nan] + K[1:], False),
    (K[:4] + [math.inf] + K[5:], False), ([-200.0] + K[1:], False), (K[:4] + [0.0] + K[5:], False),
    ([1e-9] + K[1:], True),
])
def test_camera_info_k_is_what_the_crop_accepts(k, ok):
    got = camera_info_k(_info(k))
    assert (got is not None) == ok
    try:
        camera_intrinsics({}, 320, 240, k)
        accepted = True
    except PreprocessError:
        accepted = False
    assert accepted == ok
    if ok:
        assert got == ((320, 240), tuple(float(v) for v in k))


def test_default_bundle_path_is_not_cached(tmp_path, monkeypatch):
    """default_bundle_path() asks share_path on each call (an install that appears later is found)."""
    monkeypatch.setattr(paths, "share_path", lambda *parts: os.path.join(str(tmp_path), *parts))
    assert paths.default_bundle_path() == str(tmp_path / "models" / "amiro")


def test_write_result_writes_and_says_so(tmp_path, capsys):
    """--json OUT of the commands: written with write_json and named on stdout; no path, no file and no line."""
    assert files.write_result(None, {"a": 1}) is False and files.write_result("", {"a": 1}) is False
    assert capsys.readouterr().out == ""
    out = tmp_path / "o" / "r.json"
    assert files.write_result(str(out), {"a": math.nan}) is True
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert json.loads(out.read_text()) == {"a": None}


def test_bench_help_lists_every_benchmark(capsys):
    """``m2vae-fusion bench --help`` (argparse %-formats the sub-commands' help: a "95 % intervals" once crashed it)."""
    from m2vae_fusion.cli import main
    from m2vae_fusion.commands.bench import BENCHMARKS

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "95 % intervals" in out and all(name in out for name in BENCHMARKS)
