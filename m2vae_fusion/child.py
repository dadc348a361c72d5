"""A command run in a child process of its own session, its stdout and stderr written to a log file.

Shared by the test harness (:class:`m2vae_fusion.ros.harness.NodeProcess`) and the benchmarks that start nodes
(:class:`m2vae_fusion.benchmarks.reliability.Child`); no rclpy import.
"""
from __future__ import annotations

import os
import subprocess


class LoggedProcess:
    """``cmd`` started in a new session (so a signal to its process group reaches its children too), with
    ``PYTHONFAULTHANDLER=1`` and ``env`` added to the environment, in directory ``cwd`` (None: this process's);
    stdout + stderr go to ``log_path``.

    Raises:
        OSError: the log file cannot be written or the command cannot be started.
    """

    def __init__(self, cmd, log_path: str, env: dict | None = None, cwd: str | None = None):
        self.log_path = log_path
        self.cmd = list(cmd)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far (UTF-8, undecodable bytes replaced)."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")
