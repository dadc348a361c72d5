"""Counters, rates and latency statistics of a node, and their diagnostic_msgs form (pure; no spinning).

Keys are dotted strings: ``processed.camera``, ``dropped.lidar.non_finite``, ``latency_ms.camera.p50`` …; the
fusion node publishes them as ``diagnostic_msgs/KeyValue`` pairs on ``/diagnostics``, where tests and benchmarks
read them back with :func:`status_values`.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class NodeStats:
    """Thread-safe counters and per-source latency windows.

    Args:
        latency_window: how many recent latency samples per source the percentiles are computed over.
    """

    def __init__(self, latency_window: int = 1000):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self._latency: dict = {}
        self._window = max(1, int(latency_window))
        self._last_counts: Counter = Counter()
        self._last_time = time.monotonic()

    def inc(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        with self._lock:
            self.counts[key] += n

    def latency(self, source: str, seconds: float) -> None:
        """Record one receive → publish latency of ``source`` (camera, lidar, reflectance, peer)."""
        with self._lock:
            win = self._latency.get(source)
            if win is None:
                win = self._latency[source] = deque(maxlen=self._window)
            win.append(float(seconds))
            self.counts[f"latency_samples.{source}"] += 1

    def get(self, key: str) -> int:
        with self._lock:
            return self.counts[key]

    def snapshot(self) -> dict:
        """All values as ``{key: number}``: counters, ``rate_hz.<counter>`` since the previous snapshot, and per
        source ``latency_ms.<source>.{p50,p90,p99,max,mean}`` over the window."""
        with self._lock:
            now = time.monotonic()
            dt = max(now - self._last_time, 1e-9)
            out = dict(self.counts)
            for key, value in self.counts.items():
                if key.startswith(("processed.", "received.")) or key == "dropped.total":
                    out[f"rate_hz.{key}"] = (value - self._last_counts.get(key, 0)) / dt
            self._last_counts = Counter(self.counts)
            self._last_time = now
            for source, win in self._latency.items():
                if win:
                    a = np.asarray(win, dtype=np.float64) * 1e3
                    p50, p90, p99 = np.percentile(a, [50, 90, 99])
                    out.update({f"latency_ms.{source}.p50": p50, f"latency_ms.{source}.p90": p90,
                                f"latency_ms.{source}.p99": p99, f"latency_ms.{source}.max": float(a.max()),
                                f"latency_ms.{source}.mean": float(a.mean()),
                                f"latency_ms.{source}.window": len(a)})
            return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def diagnostic_array(stamp, name: str, hardware_id: str, values: dict, info: dict | None = None,
                     level=DiagnosticStatus.OK, message: str = "") -> DiagnosticArray:
    """One ``DiagnosticStatus`` named ``name``: ``info`` (strings) first, then ``values`` sorted by key."""
    from std_msgs.msg import Header

    status = DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message)
    kv = [KeyValue(key=k, value=str(v)) for k, v in (info or {}).items()]
    kv += [KeyValue(key=k, value=_fmt(values[k])) for k in sorted(values)]
    status.values = kv
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def status_values(array: DiagnosticArray, name: str | None = None) -> dict:
    """``{key: value}`` of the status named ``name`` (or the first), numbers parsed where possible."""
    for status in array.status:
        if name is None or status.name == name:
            out = {}
            for kv in status.values:
                try:
                    out[kv.key] = int(kv.value)
                except ValueError:
                    try:
                        out[kv.key] = float(kv.value)
                    except ValueError:
                        out[kv.key] = kv.value
            return out
    return {}
