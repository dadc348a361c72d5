"""Helpers shared by the benchmarks: DDS isolation, machine facts, statistics, process CPU and memory, tables; JSON
through :func:`m2vae_fusion.files.write_json` (re-exported here).

Only the standard library, numpy and psutil here (no rclpy, no torch), so the benchmark modules' ``configure`` stays
fast and this module is importable anywhere.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from typing import Iterable, Mapping, Sequence

from m2vae_fusion.files import write_json  # noqa: F401  (the benchmarks' result writer; its one definition is there)

#: node parameters (also :class:`~m2vae_fusion.core.agent.AgentConfig` fields) that turn evidence accumulation, the
#: class evidence and novelty off: the reference of issue 14's latency target (accumulation and novelty add ≤ 10 % to
#: the per-observation latency), in ``bench runtime`` (node_plain) and ``bench belief`` (``Agent.observe``) alike
PLAIN_PARAMS = {"forgetting_factor": 0.0, "novelty_threshold": -1.0, "class_belief": "latent"}

#: ROS domain ids the benchmarks pick from (tests use 1..100, the demo 101..200).
DOMAIN_BASE, DOMAIN_SPAN = 201, 30


def isolate_dds(domain_id: int | None = None, profile: str | None = None) -> int:
    """Keep DDS discovery on this machine and on a domain of its own; set (``profile`` path) or clear (None) the
    Fast DDS profile. Must run before ``rclpy.init()``; child processes inherit it. Returns the domain id."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is None:
        domain_id = DOMAIN_BASE + os.getpid() % DOMAIN_SPAN
    os.environ["ROS_DOMAIN_ID"] = str(int(domain_id))
    if profile:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = os.path.abspath(profile)
    else:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    return int(domain_id)


def load_average() -> list:
    """1, 5 and 15-minute load averages (rounded)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return [math.nan] * 3


def machine_info() -> dict:
    """CPU count, memory, Python and the load average now."""
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "platform": platform.platform(), "python": sys.version.split()[0], "load_average": load_average()}


def stats_ms(seconds: Iterable[float]) -> dict | None:
    """Percentiles of durations given in seconds, in milliseconds: p50, p90, p99, max, mean, n (None when empty)."""
    import numpy as np

    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return None
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max()), "mean": float(a.mean()),
            "n": int(a.size)}


def ratio(a, b) -> float | None:
    """``a / b`` or None when either is missing or ``b`` is not positive."""
    if a is None or b is None or not (b > 0) or not math.isfinite(a) or not math.isfinite(b):
        return None
    return float(a) / float(b)


class ProcessMeter:
    """CPU time and memory of processes by pid (psutil): ``start()`` then ``stop()`` gives CPU % over the interval
    (100 % = one core busy), ``memory(pid)`` the resident set size now. A pid counts with its child processes."""

    def __init__(self, pids: Mapping[str, int]):
        import psutil

        self._ps = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._t0 = None
        self._cpu0: dict = {}
        self._sys0 = None

    @staticmethod
    def _cpu(proc) -> float:
        import psutil

        total = 0.0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
        return total

    def start(self) -> None:
        import psutil

        self._t0 = time.monotonic()
        self._cpu0 = {n: self._cpu(p) for n, p in self._ps.items()}
        self._sys0 = psutil.cpu_times()

    def stop(self) -> dict:
        """``{"per_process": {name: cpu %}, "machine_percent": % of all cores busy, "seconds": interval}``."""
        import psutil

        dt = max(time.monotonic() - self._t0, 1e-9)
        per = {n: 100.0 * (self._cpu(p) - self._cpu0[n]) / dt for n, p in self._ps.items()}
        s1 = psutil.cpu_times()
        busy = lambda t: sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        total = lambda t: busy(t) + t.idle + getattr(t, "iowait", 0.0)
        d_total = total(s1) - total(self._sys0)
        machine = 100.0 * (busy(s1) - busy(self._sys0)) / d_total if d_total > 0 else math.nan
        return {"per_process": per, "machine_percent": machine, "seconds": dt}

    def memory(self, name: str) -> dict:
        """``{"rss_mb": …, "uss_mb": …}`` of one process (with its children); USS = memory only this process holds."""
        import psutil

        rss = uss = 0
        proc = self._ps[name]
        try:
            for p in [proc, *proc.children(recursive=True)]:
                info = p.memory_full_info()
                rss += info.rss
                uss += getattr(info, "uss", 0)
        except psutil.Error:
            pass
        return {"rss_mb": rss / 1e6, "uss_mb": uss / 1e6}


class OtherLoad:
    """CPU that processes other than this one and its (waited-for) children used between ``start()`` and
    ``stop()``: the machine's busy time minus ours. A benchmark's own load average includes its own processes, so
    this is the figure that tells whether someone else competed. Children must have been waited for by ``stop()``
    (their CPU time is then in ``os.times()``)."""

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> "OtherLoad":
        self._t0, self._busy0, self._ours0 = time.monotonic(), self._busy(), self._ours()
        return self

    def stop(self) -> dict:
        """``{"other_cpu_percent": % of one core used by others on average, "own_cpu_percent": …, "seconds": …}``."""
        dt = max(time.monotonic() - self._t0, 1e-9)
        busy, ours = self._busy() - self._busy0, self._ours() - self._ours0
        return {"other_cpu_percent": max(0.0, 100.0 * (busy - ours) / dt), "own_cpu_percent": 100.0 * ours / dt,
                "seconds": dt}


# -- output ---------------------------------------------------------------------------------------------------------
def fmt(v, digits: int = 2, unit: str = "") -> str:
    """A number for a table cell ("-" for None/NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v}{unit}"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = [title] if title else []
    for j, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def target(name: str, value, op: str, limit: float, unit: str = "", detail: str = "") -> dict:
    """One target row: ``value op limit`` with op in ``<=``, ``<``, ``>=``; ``pass`` is None when value is missing."""
    ok = None
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        ok = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
        ok = bool(ok)
    return {"name": name, "value": value, "op": op, "limit": limit, "unit": unit, "pass": ok, "detail": detail}


def targets_table(rows: Sequence[Mapping]) -> str:
    """The PASS/MISS table of :func:`target` rows."""
    body = []
    for t in rows:
        status = "PASS" if t["pass"] else ("MISS" if t["pass"] is False else "n/a")
        body.append([t["name"], f"{fmt(t['value'])}{t['unit']}", f"{t['op']} {fmt(t['limit'])}{t['unit']}", status,
                     t.get("detail", "")])
    return table(["target", "measured", "required", "", "detail"], body, "Targets")


def main_for(module_name: str, help_: str, configure, run, argv=None) -> int:
    """``python -m <module>``: argparse with the module's own ``configure``; a UserError exits with its status."""
    import argparse

    from m2vae_fusion.errors import UserError

    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=help_)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"{module_name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{module_name}: interrupted", file=sys.stderr)
        return 130
