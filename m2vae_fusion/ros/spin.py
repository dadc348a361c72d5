"""The one way our nodes run as processes: init, build, spin, clean shut-down."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException

from m2vae_fusion.errors import UserError


def run_node(factory: Callable[[], "rclpy.node.Node"], name: str, close: str, args=None) -> int:
    """Run the node built by ``factory`` until SIGINT/SIGTERM.

    Args:
        factory: builds the node (after ``rclpy.init``); a :class:`UserError` (bad parameter, missing or corrupt
            bundle) stops start-up.
        name: logger name for the start-up error.
        close: name of the node's method that releases its resources before ``destroy_node``.
        args: command-line arguments (default ``sys.argv``).

    Returns:
        0 after SIGINT/SIGTERM (``ExternalShutdownException`` is the normal end), the error's exit status (2) when
        start-up fails.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = factory()
        except UserError as exc:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return exc.exit_code
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        if node is not None:
            getattr(node, close)()
            node.destroy_node()
        rclpy.try_shutdown()
