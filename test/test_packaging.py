"""Packaging: a robot install pulls no torch, pybullet or matplotlib (declared dependencies and the runtime modules'
imports), every requirement is pinned in requirements.lock, package.xml parses as ROS expects, and the pip set-up lays
out the executables under ``<prefix>/lib/m2vae_fusion/`` where ``ros2 launch`` looks for them.
The colcon build of both packages is in test_colcon_build.py."""
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "m2vae_fusion"
#: what a robot must not need (training, simulator, benchmark and plotting dependencies)
HEAVY = {"torch", "pybullet", "matplotlib"}
EXTRA_ONLY = HEAVY | {"scikit-learn", "onnx", "psutil"}
#: modules a robot runs: the core, the conversions, the nodes' ROS glue, recording and bag extraction, the CLI
RUNTIME_MODULES = ["m2vae_fusion.core.bundle", "m2vae_fusion.core.fusion", "m2vae_fusion.core.messages",
                   "m2vae_fusion.core.preprocess", "m2vae_fusion.core.reasons", "m2vae_fusion.bags",
                   "m2vae_fusion.paths", "m2vae_fusion.files", "m2vae_fusion.errors", "m2vae_fusion.cli",
                   "m2vae_fusion.ros.fusion_node",
                   "m2vae_fusion.ros.params", "m2vae_fusion.ros.stats", "m2vae_fusion.ros.spin",
                   "m2vae_fusion.ros.record", "m2vae_fusion.commands.record", "m2vae_fusion.data.from_bag"]
BLOCKER = r"""
import importlib.abc, importlib.util, json, pkgutil, sys
BLOCKED = {"torch", "pybullet", "matplotlib", "sklearn", "onnx", "psutil"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: not part of a robot install")
        return None

sys.meta_path.insert(0, Block())
blocked_works = True
try:
    import torch  # noqa: F401
    blocked_works = False
except ImportError:
    pass
import m2vae_fusion.core
mods = sys.argv[1:] + ["m2vae_fusion.core." + m.name for m in pkgutil.iter_modules(m2vae_fusion.core.__path__)]
failed = {}
for name in mods:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
from m2vae_fusion.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    failed.update({} if exc.code == 0 else {"m2vae-fusion --help": f"exit {exc.code}"})
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"blocked_works": blocked_works, "failed": failed, "loaded": loaded, "n": len(mods)}))
"""


def _dist(name):
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def closure(roots, extras=()):
    """Canonical names of the installed distributions ``roots`` need (transitively; ``extras`` of the roots only),
    from the installed metadata (the venv that `make setup` resolved against requirements.lock)."""
    env = default_environment()
    seen, todo = set(), [(canonicalize_name(r), tuple(extras)) for r in roots]
    while todo:
        name, want = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = _dist(name)
        assert dist is not None, f"{name} is not installed (run make setup)"
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("",) + want):
                continue
            todo.append((canonicalize_name(req.name), ()))
    return seen


def requirement_lines(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                name, _, version = line.partition("==")
                out[canonicalize_name(name)] = version
    return out


def lock():
    return requirement_lines(os.path.join(ROOT, "requirements.lock"))


def test_runtime_modules_import_without_training_sim_or_bench_packages():
    res = subprocess.run([sys.executable, "-c", BLOCKER, *RUNTIME_MODULES], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["blocked_works"], "the import blocker did not block torch"
    assert out["failed"] == {}, out["failed"]
    assert out["loaded"] == [] and out["n"] >= len(RUNTIME_MODULES)


def test_robot_install_pulls_no_torch_pybullet_or_matplotlib():
    runtime = list(requirement_lines(os.path.join(ROOT, "requirements-runtime.txt"))) + \
        list(requirement_lines(os.path.join(ROOT, "requirements-build.txt")))
    for roots, what in (([PACKAGE], "install_requires of setup.py"), (runtime, "requirements-runtime/-build.txt")):
        need = closure(roots)
        assert not need & EXTRA_ONLY, f"{what} pull {sorted(need & EXTRA_ONLY)}"
        assert {"numpy", "onnxruntime", "rosbags-image"} <= need
    # the extras carry them instead
    assert "torch" in closure([PACKAGE], ["train"]) and "pybullet" in closure([PACKAGE], ["sim"])
    assert "matplotlib" in closure([PACKAGE], ["bench"])
    assert HEAVY <= closure([PACKAGE], ["all"])


def test_every_requirement_is_pinned_in_the_lock():
    pins = lock()
    files = [f for f in os.listdir(ROOT) if re.fullmatch(r"requirements(-[a-z]+)?\.txt", f)]
    assert {"requirements-runtime.txt", "requirements-train.txt", "requirements-sim.txt", "requirements-bench.txt",
            "requirements-dev.txt", "requirements-build.txt"} <= set(files)
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        included = set(re.findall(r"^-r (\S+)", f.read(), re.M))
    assert included == set(files) - {"requirements.txt"}  # make setup installs every part
    for name in files:
        for dist, version in requirement_lines(os.path.join(ROOT, name)).items():
            assert version, f"{name}: {dist} is not pinned (==)"
            assert pins.get(dist) == version, f"{name}: {dist}=={version}, requirements.lock has {pins.get(dist)}"
    # everything those requirements pull (as installed) is pinned too, so a fresh machine resolves the same set
    every = set()
    for name in files:
        every |= closure(requirement_lines(os.path.join(ROOT, name)))
    missing = sorted(d for d in every if d not in pins and d not in ("pip", "setuptools", "wheel"))
    assert not missing, f"installed but not pinned in requirements.lock: {missing}"
    for dist in every & set(pins):
        assert SpecifierSet("==" + pins[dist]).contains(metadata.version(dist)), (dist, metadata.version(dist))


def test_package_xml_runtime_dependencies():
    from catkin_pkg.package import parse_package

    pkg = parse_package(os.path.join(ROOT, "package.xml"))
    msgs = parse_package(os.path.join(ROOT, "m2vae_fusion_msgs", "package.xml"))
    assert (pkg.name, pkg.get_build_type()) == (PACKAGE, "ament_python")
    assert (msgs.name, msgs.get_build_type()) == ("m2vae_fusion_msgs", "ament_cmake")
    run = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "sensor_msgs", "m2vae_fusion_msgs", "python3-onnxruntime-pip", "python3-rosbags-image-pip"} <= run
    assert not [d for d in run if any(h in d for h in ("torch", "pybullet", "matplotlib", "scikit", "onnx-pip"))]
    assert "sensor_msgs_py" not in run  # clouds are read by our own reader only
    assert {"python3-torch-pip", "python3-pybullet-pip", "python3-matplotlib"} <= {d.name for d in pkg.test_depends}


@pytest.mark.ros
def test_pip_setup_has_the_executables_in_lib():
    prefix = sys.prefix
    lib = os.path.join(prefix, "lib", PACKAGE)
    scripts = {ep.name for ep in metadata.distribution(PACKAGE).entry_points if ep.group == "console_scripts"}
    assert {"fusion_node", "sim_world", "m2vae-fusion"} <= scripts
    for name in scripts:
        exe = os.path.join(lib, name)
        assert os.access(exe, os.X_OK), exe
        assert os.path.samefile(exe, os.path.join(prefix, "bin", name))  # the same launcher as .venv/bin
    env = {**os.environ, "AMENT_PREFIX_PATH": prefix}
    # what launch_ros does: the package's prefix from the ament index, then <prefix>/lib/<package>/<executable>
    res = subprocess.run([sys.executable, "-c", "from ament_index_python.packages import get_package_prefix as g, "
                          "get_package_share_directory as s; print(g('m2vae_fusion')); print(s('m2vae_fusion'))"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    found_prefix, share = res.stdout.split()
    assert os.path.samefile(found_prefix, prefix)
    assert sorted(os.listdir(os.path.join(share, "launch"))) == sorted(os.listdir(os.path.join(ROOT, "launch")))
    assert os.path.isdir(os.path.join(share, "models", "amiro"))
    res = subprocess.run([os.path.join(lib, "m2vae-fusion"), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stderr
    # the nodes start from there (and stop with their one-line start-up error, exit status 2)
    res = subprocess.run([os.path.join(lib, "fusion_node"), "--ros-args", "-p", "model_dir:=/nonexistent/bundle"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "/nonexistent/bundle" in res.stdout + res.stderr, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    res = subprocess.run([os.path.join(lib, "sim_world"), "--ros-args", "-p", "num_agents:=0"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "num_agents" in res.stdout + res.stderr, res.stdout + res.stderr


def test_ament_layout_is_idempotent():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ament_layout.py"), "--prefix", sys.prefix],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr  # make setup laid it out already
