"""Reader and writer of the data set directory of docs/formats.md ("Data set directory").

Layout: ``DIR/{train,val,test}-NNNNN.npz`` shards (``np.savez``, uncompressed) and ``DIR/metadata.json``, written
last. Every file is written to a temporary name in ``DIR`` and renamed (``os.replace``, atomic on POSIX), so an
interrupted run never leaves a half-written file under a final name, and a directory without ``metadata.json`` is
refused as incomplete. ``metadata.json["shards"]`` records each shard's sha256, which the reader checks.

Errors about the user's files are raised as :class:`m2vae_fusion.errors.UserError` with one line naming the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from m2vae_fusion import __version__
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.data.classes import ATTRIBUTES, CLASS_NAMES
from m2vae_fusion.errors import UserError
from m2vae_fusion.files import atomic_write_bytes, fsync_dir, write_json

FORMAT = "m2vae_fusion.dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
METADATA = "metadata.json"
LABEL_KEYS = ("label", "colour", "shape", "material")
#: key -> (dtype, number of dimensions) of a shard array (docs/formats.md "Shard arrays").
ARRAY_SPEC = {
    "camera": (np.uint8, 4),
    "lidar": (np.float32, 2),
    "reflectance": (np.float32, 3),
    "present": (np.bool_, 2),
    "label": (np.int64, 1),
    "colour": (np.int64, 1),
    "shape": (np.int64, 1),
    "material": (np.int64, 1),
}
#: Optional arrays (docs/formats.md "Shard arrays"): written and read when present (the hard world writes them).
#: ``target_position`` float32 (N, 3): the target's centre in the agent's base frame (m, NaN row = unknown);
#: ``object_id`` int64 (N,): samples with equal ids observe the same object instance (-1 = unknown).
OPTIONAL_SPEC = {
    "target_position": (np.float32, 2),
    "object_id": (np.int64, 1),
}
_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}\.npz$")


def shard_name(split: str, index: int) -> str:
    """``"train-00000.npz"`` etc."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return f"{split}-{index:05d}.npz"


def validate_arrays(arrays: Dict[str, np.ndarray], where: str = "shard") -> int:
    """Check keys, dtypes and shapes of one shard's arrays; returns N (samples).

    camera uint8 (N, H, W, 3); lidar float32 (N, B); reflectance float32 (N, K, 2); present bool (N, 3);
    label/colour/shape/material int64 (N,).

    Raises:
        ValueError: naming ``where`` and the offending key.
    """
    missing = [k for k in ARRAY_SPEC if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing arrays {missing}")
    n = None
    for key, (dtype, ndim) in ARRAY_SPEC.items():
        a = arrays[key]
        if a.dtype != dtype or a.ndim != ndim:
            raise ValueError(f"{where}: {key} has dtype {a.dtype} and {a.ndim} dims, "
                             f"expected {np.dtype(dtype)} and {ndim}")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise ValueError(f"{where}: {key} has {a.shape[0]} samples, expected {n}")
    if arrays["camera"].shape[-1] != 3 or arrays["reflectance"].shape[-1] != 2 or \
            arrays["present"].shape[1] != len(MODALITIES):
        raise ValueError(f"{where}: camera must end in 3 channels, reflectance in 2 columns, present in 3 columns")
    for key, (dtype, ndim) in OPTIONAL_SPEC.items():
        if key in arrays:
            a = arrays[key]
            if a.dtype != dtype or a.ndim != ndim or a.shape[0] != n:
                raise ValueError(f"{where}: {key} has dtype {a.dtype} and shape {a.shape}, expected "
                                 f"{np.dtype(dtype)} with {ndim} dims and {n} samples")
    if "target_position" in arrays and arrays["target_position"].shape[1] != 3:
        raise ValueError(f"{where}: target_position must be (N, 3)")
    return int(n)


def shard_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    """The ``np.savez`` bytes of one shard (keys in docs/formats.md order); deterministic for equal arrays."""
    validate_arrays(arrays)
    buf = io.BytesIO()
    keys = list(ARRAY_SPEC) + [k for k in OPTIONAL_SPEC if k in arrays]
    np.savez(buf, **{k: np.ascontiguousarray(arrays[k]) for k in keys})
    return buf.getvalue()


def write_shard(directory: str, split: str, index: int, arrays: Dict[str, np.ndarray]) -> dict:
    """Write one shard atomically; returns its ``metadata.json["shards"]`` entry
    ``{"file", "split", "samples", "sha256"}``. Raises ValueError for malformed arrays, OSError from the file system."""
    name = shard_name(split, index)
    data = shard_bytes(arrays)
    atomic_write_bytes(os.path.join(directory, name), data)
    return {"file": name, "split": split, "samples": int(arrays["label"].shape[0]),
            "sha256": hashlib.sha256(data).hexdigest()}


def prepare_output_dir(directory: str, overwrite: bool = False) -> None:
    """Make ``directory`` ready for a new data set.

    Creates it if needed. A non-empty directory is refused unless ``overwrite``; with ``overwrite`` the old
    ``metadata.json`` is removed first (so the directory reads as incomplete from then on), then old shards and
    stale temporary files; other files are left alone.

    Raises:
        UserError: not a directory, not writable, or non-empty without ``overwrite``.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--out {directory} exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out directory {directory}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"--out directory {directory} is not writable")
    entries = os.listdir(directory)
    if entries and not overwrite:
        raise UserError(f"--out directory {directory} is not empty (pass --overwrite to replace its data set)")
    try:
        if METADATA in entries:
            os.unlink(os.path.join(directory, METADATA))
            fsync_dir(directory)
        for e in entries:
            if _SHARD_RE.match(e) or (e.startswith(".") and ".tmp-" in e):
                os.unlink(os.path.join(directory, e))
        probe = os.path.join(directory, f".write-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out directory {directory} is not writable: {exc.strerror or exc}") from None


def make_metadata(source: str, seed: Optional[int], sensors: dict, shards: List[dict],
                  class_names: Optional[List[str]] = CLASS_NAMES, world: Optional[str] = None,
                  extra: Optional[dict] = None) -> dict:
    """The ``metadata.json`` dict of docs/formats.md from the written shard entries (no timestamps, so equal inputs
    give byte-identical files).

    ``world``: ``None`` (the easy world's or a bag's layout, unchanged since format version 1: no ``world`` key,
    read as ``"easy"``) or a world name of :data:`m2vae_fusion.data.classes.WORLDS`, which adds ``world``, that
    world's ``attributes`` and the class ↔ attribute table ``classes``; ``extra`` adds further keys (e.g.
    ``views``)."""
    from m2vae_fusion.data.classes import classes_of

    splits = {s: int(sum(e["samples"] for e in shards if e["split"] == s)) for s in SPLITS}
    attributes = classes_of(world).attributes if world else ATTRIBUTES
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
        "source": source, "seed": seed,
        "modalities": list(MODALITIES),
        "class_names": list(class_names) if class_names is not None else None,
        "attributes": {k: list(v) for k, v in attributes.items()},
    }
    if world:
        meta["world"] = world
        meta["classes"] = classes_of(world).mapping()
        meta["class_id"] = "(colour * n_shapes + shape) * n_materials + material"
    meta.update(extra or {})
    meta.update({"sensors": sensors, "splits": splits, "shards": shards})
    return meta


def world_of(meta: dict) -> str:
    """The simulated world of a data set's metadata: its ``world`` key, else ``"easy"`` (data sets written before
    the hard world existed, and bags recorded from the easy world's simulator)."""
    w = meta.get("world") if isinstance(meta, dict) else None
    return w if isinstance(w, str) and w else "easy"


def write_metadata(directory: str, metadata: dict) -> None:
    """Write ``metadata.json`` atomically (the last file of a data set)."""
    write_json(os.path.join(directory, METADATA), metadata, nonfinite="raise")


def write_dataset(directory: str, shards: Iterable[Tuple[str, int, Dict[str, np.ndarray]]], source: str,
                  seed: Optional[int], sensors: dict, class_names: Optional[List[str]] = CLASS_NAMES,
                  overwrite: bool = False, on_shard=None, world: Optional[str] = None,
                  extra: Optional[dict] = None) -> dict:
    """Write a whole data set: prepare ``directory``, write each ``(split, index, arrays)`` of ``shards`` in turn,
    then ``metadata.json``. ``on_shard(entry)`` is called after each shard. Returns the metadata dict.

    Raises:
        UserError: see :func:`prepare_output_dir`; a shard whose arrays break the format.
    """
    prepare_output_dir(directory, overwrite)
    entries = []
    for split, index, arrays in shards:
        try:
            entry = write_shard(directory, split, index, arrays)
        except ValueError as exc:
            raise UserError(f"cannot write {shard_name(split, index)}: {exc}") from None
        entries.append(entry)
        if on_shard is not None:
            on_shard(entry)
    meta = make_metadata(source, seed, sensors, entries, class_names, world, extra)
    write_metadata(directory, meta)
    return meta


# --------------------------------------------------------------------------------------------------- reading
def read_metadata(directory: str) -> dict:
    """Parse and check ``DIR/metadata.json``.

    Raises:
        UserError: directory or metadata.json missing (an incomplete data set), unreadable, not JSON, or not this
            format / version.
    """
    if not os.path.isdir(directory):
        raise UserError(f"data set directory {directory} does not exist")
    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: {directory} is not a complete data set")
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is unreadable or not JSON: {exc}".splitlines()[0]) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an {FORMAT} metadata file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    shards = meta.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) and {"file", "split", "samples", "sha256"} <=
                                               set(e) for e in shards):
        raise UserError(f"{path}: 'shards' must be a list of {{file, split, samples, sha256}}")
    return meta


def read_shard(directory: str, entry: dict) -> Dict[str, np.ndarray]:
    """Read one shard listed in metadata, checking its sha256, arrays and sample count.

    Raises:
        UserError: naming the file when it is missing, unreadable, its sha256 differs or its arrays are malformed.
    """
    name = str(entry["file"])
    path = os.path.join(directory, name)
    if os.path.basename(name) != name:
        raise UserError(f"{os.path.join(directory, METADATA)} lists a shard outside the directory: {name}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"shard {path} is missing") from None
    except OSError as exc:
        raise UserError(f"shard {path} is unreadable: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"shard {path} is corrupt (sha256 differs from metadata.json)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        n = validate_arrays(arrays, f"shard {path}")
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"shard {path} is corrupt: {exc}".splitlines()[0]) from None
    if n != int(entry["samples"]):
        raise UserError(f"shard {path} holds {n} samples, metadata.json says {entry['samples']}")
    return arrays


def iter_split(directory: str, split: str, metadata: Optional[dict] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Yield the checked arrays of each shard of ``split`` in metadata order."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    meta = metadata if metadata is not None else read_metadata(directory)
    for entry in meta["shards"]:
        if entry["split"] == split:
            yield read_shard(directory, entry)


def load_split(directory: str, split: str) -> Dict[str, np.ndarray]:
    """All shards of ``split`` concatenated: ``camera`` uint8 (N, 64, 64, 3), ``lidar`` float32 (N, B),
    ``reflectance`` float32 (N, K, 2), ``present`` bool (N, 3), ``label``/``colour``/``shape``/``material``
    int64 (N,). A split without shards gives N = 0 arrays shaped from ``metadata["sensors"]``.

    Raises:
        UserError: naming the file for a missing/incomplete data set or a missing/corrupt shard, or for shards of
            differing sensor sizes.
    """
    meta = read_metadata(directory)
    parts = list(iter_split(directory, split, meta))
    if not parts:
        sensors = meta.get("sensors") or {}
        cam = sensors.get("camera", {})
        h, w = int(cam.get("height", 64)), int(cam.get("width", 64))
        b = int(sensors.get("lidar", {}).get("beams", 0))
        k = int(sensors.get("reflectance", {}).get("beams", 0))
        shapes = {"camera": (0, h, w, 3), "lidar": (0, b), "reflectance": (0, k, 2), "present": (0, 3)}
        return {key: np.zeros(shapes.get(key, (0,)), dtype) for key, (dtype, _) in ARRAY_SPEC.items()}
    out = {}
    keys = list(ARRAY_SPEC) + [k for k in OPTIONAL_SPEC if all(k in p for p in parts)]
    for key in keys:
        try:
            out[key] = np.concatenate([p[key] for p in parts], axis=0)
        except ValueError:
            raise UserError(f"shards of split {split} in {directory} have differing {key} sizes") from None
    return out
