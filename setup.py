"""ament_python package m2vae_fusion: multi-modal sensor fusion with β-VAEs and the M2VAE (Korthals et al. 2019).

Dependencies (one source: the requirements-*.txt files; exact versions in requirements.lock): ``install_requires`` is
the robot runtime less the ROS 2 packages (rclpy and the message packages come from the ROS install or the ros-*
wheels of requirements-runtime.txt); training, simulator and benchmark dependencies are the extras ``train``,
``sim`` and ``bench`` (``all``: every one). A robot install pulls no torch, pybullet or matplotlib.
"""
import os
import re
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "m2vae_fusion"


def tree(folder):
    """data_files entries that install `folder` (recursively) under share/m2vae_fusion/; torch checkpoints kept
    beside a bundle (``models/NAME.torch.pt``, for re-export) are not installed."""
    out = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith(".torch.pt"):
            out.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


def requirements(name):
    """Distribution names listed in requirements-<name>.txt (no versions: requirements.lock pins them), ros-* wheels
    left out (ROS packages are declared in package.xml)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"requirements-{name}.txt")
    if not os.path.isfile(path):  # building from an sdist without the files: no declared dependencies
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                dist = re.split(r"[=<>!~;\[ ]", line, 1)[0]
                if not dist.lower().startswith("ros-"):
                    out.append(dist)
    return out


EXTRAS = {name: requirements(name) for name in ("train", "sim", "bench")}
EXTRAS["all"] = sorted({d for deps in EXTRAS.values() for d in deps})

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
    ] + tree("launch") + tree("config") + tree("models"),
    install_requires=["setuptools"] + requirements("runtime"),
    extras_require=EXTRAS,
    zip_safe=True,
    maintainer="m2vae_fusion developers",
    maintainer_email="m2vae-fusion@example.org",
    description="Multi-modal, multi-agent sensor fusion in a shared VAE latent space (M2VAE) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "m2vae-fusion = m2vae_fusion.cli:main",
            "fusion_node = m2vae_fusion.ros.fusion_node:main",
            "sim_world = m2vae_fusion.ros.sim_world_node:main",
        ],
    },
)
