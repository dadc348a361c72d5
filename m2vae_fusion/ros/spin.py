"""The one way our nodes run as processes: init, build, spin, clean shut-down.

Executor: for the fusion node rclpy's ``EventsExecutor`` (rclpy.experimental; C++ event queue, no Python wait set
rebuilt per wake-up), for other nodes rclpy's ``SingleThreadedExecutor``, driven by a ``spin_once(timeout)`` loop on
the main thread. Its ``spin()`` ignores SIGINT in rclpy 9.1.2 and spinning it from another thread hung.

Signals: rclpy's own SIGINT/SIGTERM handlers are *not* installed (``SignalHandlerOptions.NO``). Theirs shut the
context down from a C++ thread of their own while the main thread goes on (rclpy 9.1.2), and chain to Python's
SIGINT handler, which raises ``KeyboardInterrupt`` wherever the main thread happens to be. Both raced our shut-down
(measured in the repeated-stop tests under load): a ``KeyboardInterrupt`` raised while the EventsExecutor converted a
message for a callback surfaced as pybind11's ``RuntimeError: Unable to convert call argument``, exit 1; ``sim_world``
aborted once with a corrupted heap in ``Publisher.destroy`` (its publishers destroyed while that thread shut the
context down). Instead a Python handler only sets a flag; the loop sees it within one ``spin_once`` timeout and then
everything is shut down in order on the main thread: executor, the node's resources, the node, the context. A second
signal during that clean-up is ignored (the clean-up is bounded); SIGKILL still ends a hung process.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, NoReturn

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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Set by SIGINT/SIGTERM (installed with :meth:`install`, main thread only); the spin loop polls it.

    Attributes:
        event: ``threading.Event`` set by the first stop signal.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def _on_signal(self, _signum, _frame) -> None:  # a flag only: never raises where the main thread happens to be
        self.event.set()

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        return self

    def is_set(self) -> bool:
        return self.event.is_set()


def spin_loop(node, executor, stop: StopFlag | None = None, timeout: float = 0.25) -> None:
    """Spin ``node`` on ``executor`` from this (the main) thread until ``stop`` is set (a stop signal), the context
    shuts down (someone called ``rclpy.shutdown``) or Ctrl-C raises ``KeyboardInterrupt`` (only where no
    :class:`StopFlag` is installed); returns normally in all these cases. ``timeout`` (s) bounds how long a stop
    signal waits to be seen."""
    executor.add_node(node)
    try:
        while rclpy.ok(context=node.context) and not (stop is not None and stop.is_set()):
            executor.spin_once(timeout_sec=timeout)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok(context=node.context) and not (stop is not None and stop.is_set()):
            raise
        # a callback that raced a shut-down: the normal end, not an error


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
    from rclpy.signals import SignalHandlerOptions

    stop = StopFlag().install()  # before rclpy.init: a signal during start-up is seen too
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = ex = None
    try:
        try:
            node = factory()
            if hasattr(node, "start") and not stop.is_set():
                node.start()
        except UserError as exc:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return exc.exit_code
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        ex = make_executor(getattr(node, "executor_kind", executor), node.context)
        spin_loop(node, ex, stop)
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
        # everything is released: later stop signals are ignored, also while the interpreter exits (Python resets
        # its own handlers to the default action then, so a late second Ctrl-C would kill the process with -2;
        # an ignored signal stays ignored)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def process_exit(code: int) -> NoReturn:
    """End the node process with ``code`` right after :func:`run_node` released everything (executor, node,
    context; rclpy's logging is finalised with the context), without the interpreter's own finalisation.

    Why: once in a CI run of ``make test`` (2 cores, 9 node processes started at once) a fusion node whose start-up
    had failed cleanly (exit status 2 expected, the FATAL line already written) died with SIGSEGV afterwards; the fault
    handler showed the main thread with no Python frame left, i.e. a crash in a Fast DDS thread while the interpreter
    tore down module state (rmw_fastrtps 9.3.3, rclpy 9.1.2; the usual workaround in the ROS 2 trackers is
    ``quick_exit`` after shutdown). Output streams are flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(int(code))
