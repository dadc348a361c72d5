"""Test-wide set-up. DDS is isolated before anything can call rclpy.init(): discovery stays on localhost and each
pytest run gets its own ROS_DOMAIN_ID (derived from the process id), so parallel runs and other machines' traffic
never mix. Child processes started by tests inherit these variables."""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
# onnxruntime / torch: keep tests from fighting over the 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")
