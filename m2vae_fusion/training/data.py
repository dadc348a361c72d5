"""Data set access for training and evaluation: shards (docs/formats.md) → preprocessed float32 arrays.

Preprocessing is the runtime's (:mod:`m2vae_fusion.core.preprocess`) with the sensor configs from the data set's
``metadata.json``, so training sees exactly what the fusion node feeds the β-VAE encoders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from m2vae_fusion.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split, preprocessed.

    Attributes:
        inputs: modality → float32 (N, *input_shape) network inputs (zeros where the modality is missing).
        present: bool (N, M) in ``modalities`` order.
        label: int64 (N,) class id, −1 when unknown.
    """

    inputs: Dict[str, np.ndarray]
    present: np.ndarray
    label: np.ndarray
    attributes: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])


def read_metadata(data_dir: str) -> dict:
    """The data set's metadata (via :func:`m2vae_fusion.data.shards.read_metadata`), as a :class:`UserError` when
    the directory is missing or incomplete."""
    from m2vae_fusion.data import shards

    try:
        return shards.read_metadata(data_dir)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{data_dir}: cannot read the data set metadata ({exc})") from None


def check_modalities(meta: Mapping, modalities: Sequence[str], data_dir: str) -> Dict[str, dict]:
    """Sensor configs of ``modalities`` from the metadata; UserError naming a modality the data set lacks."""
    have = list(meta.get("modalities") or [])
    sensors = meta.get("sensors") or {}
    for m in modalities:
        if m not in have or m not in sensors:
            raise UserError(f"{data_dir}/metadata.json: data set has no modality {m!r} (has {have})")
    return {m: dict(sensors[m]) for m in modalities}


def jitter_positions(positions: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Target positions float (N, 3) (base frame, m) moved by uniform offsets in [−jitter, jitter] m across and along
    the line of sight from the base origin (floor plane; z kept): the errors of a real tracker, for training crops
    that do not rely on an exact centre (README "How exact the target position must be"). Non-finite rows stay."""
    p = np.array(positions, np.float64, copy=True)
    r = np.maximum(np.hypot(p[:, 0], p[:, 1]), 1e-6)
    ux, uy = p[:, 0] / r, p[:, 1] / r
    lat, rad = rng.uniform(-jitter, jitter, size=(2, len(p)))
    p[:, 0] += rad * ux - lat * uy
    p[:, 1] += rad * uy + lat * ux
    return p


def preprocess_split(arrays: Mapping[str, np.ndarray], sensors: Mapping[str, Mapping], modalities: Sequence[str],
                     all_modalities: Sequence[str], where: str = "", chunk: int = 2048, position_jitter: float = 0.0,
                     rng: Optional[np.random.Generator] = None) -> Split:
    """Raw shard arrays → :class:`Split` (preprocessing of :mod:`m2vae_fusion.core.preprocess`); with
    ``position_jitter`` > 0 (m) the target positions of the crops are moved first (:func:`jitter_positions`, ``rng``)."""
    from m2vae_fusion.core.preprocess import PreprocessError, preprocess

    n = int(np.asarray(arrays["label"]).shape[0])
    present_all = np.asarray(arrays.get("present", np.ones((n, len(all_modalities)), bool)), bool)
    cols = [list(all_modalities).index(m) for m in modalities]
    present = present_all[:, cols]
    inputs = {}
    # the target's position in the base frame (hard world): target-centred crops where the config enables them
    target = arrays.get("target_position") if hasattr(arrays, "get") else None
    target = np.asarray(target, np.float64) if target is not None else None
    if target is not None and position_jitter > 0:
        target = jitter_positions(target, float(position_jitter), rng if rng is not None else np.random.default_rng(0))
    for j, m in enumerate(modalities):
        raw = np.asarray(arrays[m])
        parts = []
        for a in range(0, n, chunk):
            block = raw[a:a + chunk]
            if m != "camera":  # missing observations hold zeros; keep them finite and valid for the encoder
                block = np.where(present[a:a + chunk, j].reshape((-1,) + (1,) * (block.ndim - 1)), block,
                                 np.zeros_like(block))
            try:
                tp = target[a:a + chunk] if target is not None else None
                parts.append(preprocess(m, block, sensors[m], target_position=tp))
            except PreprocessError as exc:
                raise UserError(f"{where}: {m} samples {a}..{a + len(block) - 1} cannot be preprocessed ({exc})") \
                    from None
        inputs[m] = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    label = np.asarray(arrays["label"], np.int64)
    attrs = {k: np.asarray(arrays[k], np.int64) for k in ("colour", "shape", "material") if k in arrays}
    return Split(inputs, present, label, attrs)


def load_dataset(data_dir: str, modalities: Sequence[str], splits: Sequence[str] = SPLITS,
                 sensors: Optional[Mapping[str, Mapping]] = None, position_jitter: float = 0.0, seed: int = 0):
    """Read and preprocess the splits of a data set.

    ``sensors`` (e.g. a bundle's preprocessing configs) replaces the data set's own configs; the input shapes they
    give must agree with the data set's (UserError otherwise). ``position_jitter`` (m) moves the **train** split's
    target positions before cropping (:func:`jitter_positions`, seeded by ``seed``); the other splits keep them.

    Returns:
        ``(metadata, sensors, {split: Split})``.

    Raises:
        UserError: missing/incomplete directory, missing or corrupt shards (naming the file), missing modality.
    """
    from m2vae_fusion.data import shards

    meta = read_metadata(data_dir)
    own = check_modalities(meta, modalities, data_dir)
    if sensors is not None:
        from m2vae_fusion.core.preprocess import input_shape
        for m in modalities:
            if tuple(input_shape(m, sensors[m])) != tuple(input_shape(m, own[m])):
                raise UserError(f"{data_dir}/metadata.json: sensors.{m} gives input shape "
                                f"{tuple(input_shape(m, own[m]))}, the model expects {tuple(input_shape(m, sensors[m]))}")
        sensors = {m: dict(sensors[m]) for m in modalities}
    else:
        sensors = own
    all_mods = list(meta["modalities"])
    out = {}
    for s in splits:
        try:
            arrays = shards.load_split(data_dir, s)
        except UserError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{data_dir}: cannot load split {s!r} ({exc})") from None
        out[s] = preprocess_split(arrays, sensors, modalities, all_mods, where=f"{data_dir} ({s})",
                                  position_jitter=position_jitter if s == "train" else 0.0,
                                  rng=np.random.default_rng(seed))
    return meta, sensors, out


def class_names_of(meta: Mapping) -> Optional[list]:
    names = meta.get("class_names")
    return list(names) if names else None
