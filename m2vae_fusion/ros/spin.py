"""The one way our nodes run as processes: init, build, spin, clean shut-down.

Executor: for the fusion node rclpy's ``EventsExecutor`` (rclpy.experimental; C++ event queue, no Python wait set
rebuilt per wake-up), for other nodes rclpy's ``SingleThreadedExecutor``, driven by a ``spin_once(timeout)`` loop on
the main thread. Its ``spin()`` ignores SIGINT in rclpy 9.1.2 and
spinning it from another thread hung; the main-thread loop ends on SIGINT/SIGTERM through rclpy's signal handlers
(the context shuts down, ``spin_once`` raises ``ExternalShutdownException``) and on Ctrl-C (``KeyboardInterrupt``).
"""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException

from m2vae_fusion.errors import UserError


def make_executor(kind: str = "events", context=None):
    """``events``: rclpy.experimental.EventsExecutor; ``single``: rclpy's SingleThreadedExecutor."""
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor(context=context)
    from rclpy.executors import SingleThreadedExecutor

    return SingleThreadedExecutor(context=context)


def spin_loop(node, executor, timeout: float = 0.5) -> None:
    """Spin ``node`` on ``executor`` from this (the main) thread until the context shuts down (SIGINT/SIGTERM) or
    Ctrl-C; returns normally in both cases."""
    executor.add_node(node)
    try:
        while rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=timeout)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=node.context):
            raise
        # a callback that raced the shut-down (e.g. a timer publishing on the context SIGTERM just shut down):
        # the normal end, not an error


def run_node(factory: Callable[[], "rclpy.node.Node"], name: str, close: str, args=None,
             executor: str = "single") -> int:
    """Run the node built by ``factory`` until SIGINT/SIGTERM.

    Args:
        factory: builds the node (after ``rclpy.init``); a :class:`UserError` (bad parameter, missing or corrupt
            bundle) stops start-up. A node with a ``start()`` method (the lifecycle fusion node: autostart) has it
            called next; a :class:`UserError` from it stops start-up too.
        name: logger name for the start-up error.
        close: name of the node's method that releases its resources before ``destroy_node``.
        args: command-line arguments (default ``sys.argv``).
        executor: ``single`` (default) or ``events`` (see :func:`make_executor`); a node's ``executor_kind``
            attribute (the fusion node's ``executor`` parameter, default ``events``) takes precedence. The simulator
            node stays on ``single``: its sensor timers (pybullet rendering in the callback) did not fire under the
            EventsExecutor (rclpy 9.1.2; test_ros_sim_world).

    Returns:
        0 after SIGINT/SIGTERM/Ctrl-C, the error's exit status (2) when start-up fails.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = ex = None
    try:
        try:
            node = factory()
            if hasattr(node, "start"):
                node.start()
        except UserError as exc:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return exc.exit_code
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        ex = make_executor(getattr(node, "executor_kind", executor), node.context)
        spin_loop(node, ex)
        return 0
    finally:
        try:
            if ex is not None:
                ex.shutdown()
            if node is not None:
                getattr(node, close)()
                node.destroy_node()
        except KeyboardInterrupt:  # a second Ctrl-C during clean-up
            pass
        rclpy.try_shutdown()
