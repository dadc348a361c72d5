"""Start-up and shut-down of the fusion node as a process: bad bundles and parameters stop it with a message naming
the file or parameter (exit status 2), SIGTERM and SIGINT end it cleanly (exit status 0), and no node imports torch."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import rclpy  # noqa: E402,F401
import m2vae_fusion_msgs.msg  # noqa: E402,F401

from m2vae_fusion.ros.harness import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
MODULE = "m2vae_fusion.ros.fusion_node"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from linear_bundle import make_linear_bundle  # small and torch-free: start-up is what is tested here

    return make_linear_bundle(str(tmp_path_factory.mktemp("bundle")), 4, 4, seed=2)


def _broken(bundle_dir, tmp, kind):
    out = os.path.join(tmp, kind)
    shutil.copytree(bundle_dir, out)
    if kind == "corrupt_onnx":
        path = os.path.join(out, "m2vae_encoder_camera+lidar.onnx")
        with open(path, "r+b") as f:
            f.seek(40)
            f.write(b"\x00garbage\x00")
        return out, "m2vae_encoder_camera+lidar.onnx"
    if kind == "missing_onnx":
        os.remove(os.path.join(out, "head.onnx"))
        return out, "head.onnx"
    if kind == "no_manifest":
        os.remove(os.path.join(out, "manifest.json"))
        return out, "manifest.json"
    if kind == "bad_json":
        with open(os.path.join(out, "manifest.json"), "w") as f:
            f.write("{not json")
        return out, "manifest.json"
    if kind == "unloadable_onnx":  # sums made to match: onnxruntime itself must refuse it
        from m2vae_fusion.core.bundle import compute_model_id, sha256_file

        path = os.path.join(out, "m2vae_decoder_lidar.onnx")
        with open(path, "wb") as f:
            f.write(b"this is not an onnx model")
        mpath = os.path.join(out, "manifest.json")
        with open(mpath) as f:
            manifest = json.load(f)
        manifest["files"]["m2vae_decoder_lidar.onnx"] = sha256_file(path)
        manifest["model_id"] = compute_model_id(manifest["files"])
        with open(mpath, "w") as f:
            json.dump(manifest, f)
        return out, "m2vae_decoder_lidar.onnx"
    raise ValueError(kind)


BAD = ["corrupt_onnx", "missing_onnx", "no_manifest", "bad_json", "unloadable_onnx", "no_dir"]


def test_bad_bundles_and_parameters_stop_the_node_naming_the_cause(bundle_dir, tmp_path):
    cases = {}
    for kind in BAD:
        if kind == "no_dir":
            cases[kind] = ({"model_dir": str(tmp_path / "nowhere")}, "nowhere")
        else:
            path, fname = _broken(bundle_dir, str(tmp_path), kind)
            cases[kind] = ({"model_dir": path}, fname)
    cases["bad_lidar_type"] = ({"model_dir": bundle_dir, "lidar_type": "Sonar"}, "lidar_type")
    cases["bad_modality"] = ({"model_dir": bundle_dir, "modalities": ["camera", "sonar"]}, "modalities")
    cases["bad_reliability"] = ({"model_dir": bundle_dir, "sensor_qos_reliability": "sometimes"},
                                "sensor_qos_reliability")
    cases["wrong_type"] = ({"model_dir": bundle_dir, "max_targets": "many"}, "max_targets")
    cases["zero_targets"] = ({"model_dir": bundle_dir, "max_targets": 0}, "max_targets")
    procs = {k: NodeProcess(MODULE, "", params, str(tmp_path / "logs"), name=k) for k, (params, _) in cases.items()}
    try:
        for kind, proc in procs.items():
            code = proc.wait(60)
            log = proc.log() if code is not None else proc.dump_stack()
            assert code == 2, f"{kind}: exit {code}\n{log}"
            assert cases[kind][1] in log and "cannot start" in log, f"{kind}:\n{log}"
            assert "Traceback" not in log, f"{kind}:\n{log}"
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_node_cleanly(bundle_dir, tmp_path, sig):
    proc = NodeProcess(MODULE, "/sig", {"model_dir": bundle_dir}, str(tmp_path), name="sig")
    try:
        deadline = time.monotonic() + 30
        while "fusing" not in proc.log() and time.monotonic() < deadline and proc.alive():
            time.sleep(0.1)
        assert "fusing" in proc.log(), proc.log()
        time.sleep(0.5)
        proc.proc.send_signal(sig)
        assert proc.wait(15) == 0, proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()


def test_nodes_do_not_import_torch():
    code = ("import sys; import m2vae_fusion.ros.fusion_node, m2vae_fusion.ros.sim_world_node, "
            "m2vae_fusion.ros.harness; bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
