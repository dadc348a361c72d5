"""rosbag2 basics shared by the recorder (:mod:`m2vae_fusion.ros.record`) and the data set extraction
(:mod:`m2vae_fusion.data.from_bag`): the message type names they handle and the ``rosbags`` typestore that
(de)serialises them. Standard library only at module level; ``rosbags`` is imported when the typestore is built.
"""
from __future__ import annotations

import glob
import os
import sys

IMAGE = "sensor_msgs/msg/Image"
SCAN = "sensor_msgs/msg/LaserScan"
CLOUD = "sensor_msgs/msg/PointCloud2"
#: the camera's intrinsics: its ``k`` places the target-centred camera crop (node and bag extraction)
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TARGET = "m2vae_fusion_msgs/msg/TargetOfInterest"
STRING = "std_msgs/msg/String"
#: the simulated world's ground truth (std_msgs/String, JSON), recorded and used for labels when present
GROUND_TRUTH_TOPIC = "/sim/ground_truth"
MSGS_PACKAGE = "m2vae_fusion_msgs"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def msg_dir() -> str:
    """Folder of the ``m2vae_fusion_msgs`` ``.msg`` files: the ament index when ``AMENT_PREFIX_PATH`` is set, else
    ``sys.prefix/share/m2vae_fusion_msgs/msg`` (the venv build), else the repository's ``m2vae_fusion_msgs/msg``."""
    if os.environ.get("AMENT_PREFIX_PATH"):
        try:
            from ament_index_python.packages import get_package_share_directory

            d = os.path.join(get_package_share_directory(MSGS_PACKAGE), "msg")
            if glob.glob(os.path.join(d, "*.msg")):
                return d
        except Exception:  # package not in the index
            pass
    d = os.path.join(sys.prefix, "share", MSGS_PACKAGE, "msg")
    if glob.glob(os.path.join(d, "*.msg")):
        return d
    return os.path.join(REPO_ROOT, MSGS_PACKAGE, "msg")


_STORE = None


def typestore():
    """rosbags typestore: ROS 2 Kilted's standard types plus the ``m2vae_fusion_msgs`` types (from their .msg files,
    see :func:`msg_dir`). Built once per process.

    Raises:
        UserError: no TargetOfInterest definition in the .msg folder found.
    """
    global _STORE
    if _STORE is None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        store = get_typestore(Stores.ROS2_KILTED)
        types = {}
        folder = msg_dir()
        for path in sorted(glob.glob(os.path.join(folder, "*.msg"))):
            name = f"{MSGS_PACKAGE}/msg/{os.path.splitext(os.path.basename(path))[0]}"
            with open(path, encoding="utf-8") as f:
                types.update(get_types_from_msg(f.read(), name))
        if TARGET not in types:
            from m2vae_fusion.errors import UserError

            raise UserError(f"no {TARGET} definition found in {folder}")
        store.register(types)
        _STORE = store
    return _STORE
