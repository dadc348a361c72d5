"""Running the nodes as processes and talking to them from Python: for tests, benchmarks and the demo.

- :class:`NodeProcess` starts ``python -m <module> --ros-args -r __ns:=… --params-file <yaml>`` with parameters
  written to a YAML file under ``/**:``, logs to a file, and stops with SIGTERM (then SIGKILL).
- :class:`Probe` is an rclpy node spinning in a background thread that publishes, records what it receives, and
  reads the nodes' ``/diagnostics``.

The caller initialises rclpy (``rclpy.init()``) and must set ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a
``ROS_DOMAIN_ID`` first (test/conftest.py does); child processes inherit the environment.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Callable

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from m2vae_fusion.child import LoggedProcess
from m2vae_fusion.ros.stats import status_values

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def write_params(path: str, params: dict) -> str:
    """Write ``params`` as a ROS 2 parameter file that applies to every node (``/**: ros__parameters:``)."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"/**": {"ros__parameters": params}}, f, sort_keys=False)
    return path


class NodeProcess(LoggedProcess):
    """A node run as ``python -m module`` in a child process.

    Args:
        module: e.g. ``m2vae_fusion.ros.fusion_node``.
        namespace: e.g. ``/agent1`` (empty: none).
        params: parameters, written to ``<log_dir>/<name>.yaml``.
        log_dir: where the parameter file and ``<name>.log`` (stdout + stderr) go.
        name: file stem; defaults to the namespace's last part or the module's.
        extra_args: more ``--ros-args`` arguments (e.g. remappings).
        params_files: parameter files loaded before ``params`` (e.g. ``config/fusion.yaml``).
        cwd: the child's working directory (None: this process's). ``python -m`` puts it first on ``sys.path``, so a
            child meant to run another checkout's code (``PYTHONPATH`` in ``env``) must start there: from this
            repository's root it would import this checkout's package instead.
    """

    def __init__(self, module: str, namespace: str = "", params: dict | None = None, log_dir: str = ".",
                 name: str | None = None, extra_args=(), env: dict | None = None, params_files=(),
                 cwd: str | None = None):
        self.name = name or (namespace.strip("/").replace("/", "_") or module.rsplit(".", 1)[-1])
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{self.name}.log")
        cmd = [sys.executable, "-m", module, "--ros-args"]
        if namespace:
            cmd += ["-r", f"__ns:={namespace}"]
        for path in params_files:  # applied first: ``params`` override them (absolute: the child may start elsewhere)
            cmd += ["--params-file", os.path.abspath(str(path))]
        if params:
            cmd += ["--params-file", os.path.abspath(write_params(os.path.join(log_dir, f"{self.name}.yaml"), params))]
        cmd += list(extra_args)
        super().__init__(cmd, self.log_path, env, cwd=cwd)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def dump_stack(self) -> str:
        """Ask a hung child for its Python stacks (SIGABRT; the child runs with PYTHONFAULTHANDLER=1) and return its
        log. The child dies from it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return self.log()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status (negative: killed by a signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Probe:
    """A helper node spinning in a background thread.

    ``subscribe(topic, type)`` records messages; ``wait_for(topic, predicate)`` waits for a recorded message that
    satisfies ``predicate``; ``diagnostics(name)`` returns the newest values of a ``/diagnostics`` status.
    """

    def __init__(self, name: str = "probe", context=None):
        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cv = threading.Condition()
        self.received: dict = defaultdict(list)
        self.diag: dict = {}
        self._pubs: dict = {}
        self._subs: dict = {}
        self.subscribe("/diagnostics", DiagnosticArray, callback=self._on_diag)
        self._thread = threading.Thread(target=self._spin, name=f"{name}_spin", daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self):
        while self._running and rclpy.ok(context=self.executor.context):
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races
                if not self._running:
                    return

    def _on_diag(self, msg: DiagnosticArray):
        with self.cv:
            for st in msg.status:
                vals = status_values(DiagnosticArray(status=[st]))
                vals["_received"] = time.monotonic()
                self.diag[st.name] = vals
            self.cv.notify_all()

    def subscribe(self, topic: str, mtype, qos: QoSProfile = RELIABLE_QOS, callback: Callable | None = None,
                  keep: Callable | None = None):
        """Record ``(monotonic receive time, message)`` per message on ``topic`` (or call ``callback`` instead).

        ``keep``: what is recorded of each message (default: the message itself). A benchmark that records thousands
        of messages should keep a few fields: the recorded messages are Python objects the probe's process must
        garbage-collect, and in ``bench runtime`` the gen-2 collections over ~4,500 recorded LatentEmbeddings with
        their contribution stamps stalled the probe's thread for 80-210 ms every ~6 s, which showed up as every
        node's end-to-end p99."""
        def record(msg, topic=topic):
            item = (time.monotonic(), msg if keep is None else keep(msg))
            with self.cv:
                self.received[topic].append(item)
                self.cv.notify_all()

        if topic not in self._subs:
            self._subs[topic] = self.node.create_subscription(mtype, topic, callback or record, qos)
        return self._subs[topic]

    def publisher(self, topic: str, mtype, qos: QoSProfile = RELIABLE_QOS):
        key = (topic, mtype)
        if key not in self._pubs:
            self._pubs[key] = self.node.create_publisher(mtype, topic, qos)
        return self._pubs[key]

    def publish(self, topic: str, msg, qos: QoSProfile = RELIABLE_QOS):
        self.publisher(topic, type(msg), qos).publish(msg)

    def messages(self, topic: str, predicate: Callable = lambda m: True) -> list:
        with self.cv:
            return [m for _, m in self.received[topic] if predicate(m)]

    def clear(self, topic: str | None = None):
        with self.cv:
            if topic is None:
                self.received.clear()
            else:
                self.received[topic] = []

    def wait_for(self, topic: str, predicate: Callable = lambda m: True, timeout: float = 10.0,
                 since: float = -1.0, poke: Callable | None = None, poke_period: float = 0.25):
        """The first message on ``topic`` received after ``since`` (monotonic) that satisfies ``predicate``;
        None on timeout. ``poke()`` is called every ``poke_period`` s while waiting (e.g. to re-publish an input
        over a best-effort link)."""
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while True:
            now = time.monotonic()
            if poke is not None and now >= next_poke:
                poke()
                next_poke = now + poke_period
            with self.cv:
                for t, m in self.received[topic]:
                    if t > since and predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(min(left, poke_period if poke else left))

    def diagnostics(self, name_contains: str, after: float = -1.0, timeout: float = 10.0,
                    predicate: Callable = lambda v: True) -> dict | None:
        """Values of the newest /diagnostics status whose name contains ``name_contains``, received after
        ``after`` (monotonic) and satisfying ``predicate``; None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for name, vals in self.diag.items():
                    if name_contains in name and vals["_received"] > after and predicate(vals):
                        return dict(vals)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def wait_subscribers(self, topic: str, mtype, qos: QoSProfile, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until a publisher of ours on ``topic`` is matched by ``count`` subscriptions."""
        pub = self.publisher(topic, mtype, qos)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pub.get_subscription_count() >= count:
                return True
            time.sleep(0.05)
        return False

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def close(self):
        self._running = False
        self._thread.join(timeout=2.0)
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown(timeout_sec=5.0)  # never wait forever for a spin that a shut-down context left behind
