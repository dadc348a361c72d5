"""Writing the package's files: atomic writes and the one JSON writer (result files of the benchmarks and commands,
bundle manifests, data set metadata, training run facts).

Standard library only (no numpy, torch or rclpy import), so every layer can use it. A file is written to a temporary
name in its own directory, flushed to disk and renamed over the final name (``os.replace``, atomic on POSIX): an
interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import json
import math
import os

#: what :func:`write_json` does with NaN and ±inf
NONFINITE = ("null", "keep", "raise")


def fsync_dir(path: str) -> None:
    """fsync a directory (so a rename in it is on disk); silently nothing where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory (``.NAME.tmp-PID``), fsync and
    ``os.replace``; the temporary file is removed when writing fails.

    Raises:
        OSError: from the file system (e.g. the directory does not exist or is not writable).
    """
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def json_safe(obj):
    """JSON-safe copy of ``obj``: non-finite floats → None, tuples → lists, numpy scalars (anything with ``.item()``)
    → Python numbers, mapping keys → ``str``. Other values are returned as they are."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalar
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj, indent: int | None = 2, nonfinite: str = "null", sort_keys: bool = False) -> str:
    """The text :func:`write_json` writes: ``json.dumps`` with ``indent`` and a final newline.

    ``nonfinite``: ``"null"`` writes ``obj`` through :func:`json_safe` (NaN/±inf → ``null``, numpy scalars as
    numbers: standard JSON, what the benchmark results always held); ``"keep"`` writes it as given (Python's
    ``NaN``/``Infinity`` tokens; a bundle manifest's bytes as ``export`` always wrote them); ``"raise"`` refuses
    non-finite numbers.

    Raises:
        ValueError: ``nonfinite`` is not one of :data:`NONFINITE`, or a non-finite number with ``"raise"``.
        TypeError: a value JSON cannot hold (with ``"keep"``/``"raise"``, also numpy scalars).
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, not {nonfinite!r}")
    if nonfinite == "null":
        obj = json_safe(obj)
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=nonfinite != "raise") + "\n"


def write_json(path: str, obj, indent: int | None = 2, nonfinite: str = "null", sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON to ``path`` (UTF-8, :func:`json_text`) atomically (:func:`atomic_write_bytes`),
    creating the parent directories.

    Raises:
        ValueError, TypeError: see :func:`json_text` (nothing is written then).
        OSError: from the file system.
    """
    text = json_text(obj, indent=indent, nonfinite=nonfinite, sort_keys=sort_keys)
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def write_result(path: str | None, obj) -> bool:
    """A command's ``--json OUT``: write ``obj`` to ``path`` with :func:`write_json` (non-finite numbers as null) and
    print ``wrote OUT``; nothing when ``path`` is empty or None. Returns whether it wrote.

    Raises:
        ValueError, TypeError, OSError: see :func:`write_json`.
    """
    if not path:
        return False
    write_json(path, obj)
    print(f"wrote {path}", flush=True)
    return True
