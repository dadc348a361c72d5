"""ament_python package m2vae_fusion: multi-modal sensor fusion with β-VAEs and the M2VAE (Korthals et al. 2019)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "m2vae_fusion"


def tree(folder):
    """data_files entries that install `folder` (recursively) under share/m2vae_fusion/."""
    out = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            out.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
    ] + tree("launch") + tree("config") + tree("models"),
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="m2vae_fusion developers",
    maintainer_email="m2vae-fusion@example.org",
    description="Multi-modal, multi-agent sensor fusion in a shared VAE latent space (M2VAE) for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "m2vae-fusion = m2vae_fusion.cli:main",
            "fusion_node = m2vae_fusion.ros.fusion_node:main",
            "sim_world = m2vae_fusion.ros.sim_world_node:main",
        ],
    },
)
