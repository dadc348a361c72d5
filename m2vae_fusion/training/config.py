"""Training configuration: defaults, YAML loading, ``KEY=VALUE`` overrides and validation.

Hyper-parameters are named as in Korthals et al., FUSION 2019: ``beta_norm`` (β_norm, Sec. III-A), ``alpha`` (α, weight
of the mutual KL terms, Eq. 4-5), ``alpha_reenc`` (α of the re-encoding loss, Eq. 19), ``latent_dim`` (D_z),
``feature_dim`` (D_*, Sec. V-D). Any problem raises :class:`m2vae_fusion.errors.UserError` naming the key (exit 2).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Dict, Iterable, Mapping, Optional

from m2vae_fusion.errors import UserError

from m2vae_fusion.core.modalities import MODALITIES

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "threads": 2,
    "modalities": list(MODALITIES),
    "feature_dim": 10,
    "latent_dim": 32,
    "objective": "m2vae",
    # m: the train split's target positions (target-centred crops) are moved by up to this much across and along the
    # line of sight (uniform, one seeded draw per sample), so crops do not need a perfect tracker (0: exact positions)
    "position_jitter": 0.0,
    "betavae": {
        # per modality (README "Unsupervised β-VAEs that keep the attribute"): the LiDAR's few-mm depth profile and
        # the reflectance's intensity steps are smaller than what β = 0.01·D_x/D_z lets a latent dimension encode
        "beta_norm": {"camera": 0.01, "lidar": 0.0001, "reflectance": 0.001},
        "aux_weight": 0.0,
        "standardize": True,
        "warmup_epochs": 2,
        "epochs": {"camera": 60, "lidar": 120, "reflectance": 100},
        "min_steps": 500,
        "batch_size": 128,
        "lr": 1.0e-3,
        "camera_channels": [16, 32, 32, 64],
        "lidar_channels": [16, 32, 32],
        "trunk_hidden": 256,
        "reflectance_hidden": [64, 64],
    },
    "m2vae": {
        "beta_norm": 0.01,
        "alpha": 0.01,
        "alpha_reenc": 0.0,
        "epochs": 60,
        "min_steps": 3000,
        "batch_size": 256,
        "lr": 1.0e-3,
        "hidden": [128, 64],
        "fusion_hidden": 64,
    },
    "head": {
        "hidden": 256,
        "epochs": 60,
        "batch_size": 256,
        "lr": 1.0e-3,
    },
}

# kind of every leaf: "int+" positive int, "float+" positive float, "float0" non-negative float,
# "ints+" list of positive ints, "epochs" positive int or {modality: positive int}, "betas" non-negative float or
# {modality: non-negative float}, "modalities" list of names
SCHEMA: Dict[str, Any] = {
    "seed": "int", "threads": "int+", "modalities": "modalities", "feature_dim": "int+", "latent_dim": "int+",
    "objective": "objective", "position_jitter": "float0",
    "betavae": {"beta_norm": "betas", "aux_weight": "float0", "standardize": "bool", "warmup_epochs": "int0", "epochs": "epochs", "min_steps": "int0", "batch_size": "int+", "lr": "float+",
                "camera_channels": "ints+", "lidar_channels": "ints+", "trunk_hidden": "int+",
                "reflectance_hidden": "ints+"},
    "m2vae": {"beta_norm": "float0", "alpha": "float0", "alpha_reenc": "float0", "epochs": "int+", "min_steps": "int0",
              "batch_size": "int+", "lr": "float+", "hidden": "ints+", "fusion_hidden": "int+"},
    "head": {"hidden": "int+", "epochs": "int+", "batch_size": "int+", "lr": "float+"},
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_leaf(key: str, kind: str, v, modalities: Iterable[str], partial: bool = False) -> Any:
    def bad(what):
        raise UserError(f"config key {key!r}: {what}, got {v!r}")

    if kind == "bool":
        if not isinstance(v, bool):
            bad("must be true or false")
    elif kind == "int":
        if not _is_int(v):
            bad("must be an integer")
    elif kind == "int+":
        if not _is_int(v) or v <= 0:
            bad("must be a positive integer")
    elif kind == "int0":
        if not _is_int(v) or v < 0:
            bad("must be a non-negative integer")
    elif kind in ("float+", "float0"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            bad("must be a number")
        if kind == "float+" and v <= 0:
            bad("must be positive")
        if kind == "float0" and v < 0:
            bad("must be non-negative")
        v = float(v)
    elif kind == "ints+":
        if not isinstance(v, list) or not v or not all(_is_int(x) and x > 0 for x in v):
            bad("must be a non-empty list of positive integers")
    elif kind == "epochs":
        if isinstance(v, dict):
            for m, e in v.items():
                if m not in MODALITIES:
                    raise UserError(f"config key {key + '.' + str(m)!r}: unknown modality {m!r} "
                                    f"(expected one of {list(MODALITIES)})")
                if not _is_int(e) or e <= 0:
                    raise UserError(f"config key {key + '.' + str(m)!r}: must be a positive integer, got {e!r}")
            missing = [m for m in modalities if m not in v]
            if missing and not partial:
                raise UserError(f"config key {key!r}: no epochs for modality {missing[0]!r}")
        elif not _is_int(v) or v <= 0:
            bad("must be a positive integer or a mapping modality → positive integer")
    elif kind == "objective":
        from m2vae_fusion.training.objectives import NAMES
        if v not in NAMES:
            bad(f"must be one of {', '.join(NAMES)}")
    elif kind == "betas":
        if isinstance(v, dict):
            for m, b in v.items():
                if m not in MODALITIES:
                    raise UserError(f"config key {key + '.' + str(m)!r}: unknown modality {m!r} "
                                    f"(expected one of {list(MODALITIES)})")
                if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0 or b != b or b == float("inf"):
                    raise UserError(f"config key {key + '.' + str(m)!r}: must be a non-negative number, got {b!r}")
            missing = [m for m in modalities if m not in v]
            if missing and not partial:
                raise UserError(f"config key {key!r}: no value for modality {missing[0]!r}")
            v = {m: float(b) for m, b in v.items()}
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
            bad("must be a non-negative number or a mapping modality → non-negative number")
        else:
            v = float(v)
    elif kind == "modalities":
        if not isinstance(v, list) or len(v) < 2:
            bad("must list at least two modalities")
        for m in v:
            if m not in MODALITIES:
                raise UserError(f"config key {key!r}: unknown modality {m!r} (expected some of {list(MODALITIES)})")
        if len(set(v)) != len(v):
            bad("lists a modality twice")
        v = [m for m in MODALITIES if m in v]  # bundle order
    return v


def validate(cfg: Mapping, partial: bool = False) -> Dict[str, Any]:
    """Check keys, types and ranges against :data:`SCHEMA`; returns a normalised copy. ``partial``: a user file or
    ``--set`` overrides before they are merged over the defaults (a per-modality mapping may name some modalities
    only, e.g. ``betavae.epochs.camera=4``; the merged config must be complete).

    Raises:
        UserError: unknown key, unknown modality, wrong type, non-positive size (message names the key).
    """
    if not isinstance(cfg, Mapping):
        raise UserError("config must be a mapping of keys to values")
    out: Dict[str, Any] = {}
    mods = cfg.get("modalities", DEFAULTS["modalities"])
    mods = _check_leaf("modalities", "modalities", mods, MODALITIES)
    for key, val in cfg.items():
        if key not in SCHEMA:
            raise UserError(f"config key {key!r}: unknown (known keys: {', '.join(SCHEMA)})")
        kind = SCHEMA[key]
        if isinstance(kind, dict):
            if not isinstance(val, Mapping):
                raise UserError(f"config key {key!r}: must be a mapping")
            sub = {}
            for k2, v2 in val.items():
                if k2 not in kind:
                    raise UserError(f"config key {key + '.' + str(k2)!r}: unknown (known keys of {key!r}: "
                                    f"{', '.join(kind)})")
                sub[k2] = _check_leaf(f"{key}.{k2}", kind[k2], v2, mods, partial)
            out[key] = sub
        else:
            out[key] = _check_leaf(key, kind, val, MODALITIES)
    return out


def _merge(base: Dict, upd: Mapping) -> Dict:
    """``upd`` over ``base``, recursively. A per-modality mapping over one number (``--set betavae.beta_norm=0.01
    --set betavae.beta_norm.camera=0.1``) keeps the number for the modalities the mapping does not name."""
    res = copy.deepcopy(base)
    for k, v in upd.items():
        old = res.get(k)
        if isinstance(v, Mapping) and isinstance(old, (int, float)) and not isinstance(old, bool):
            res[k] = _merge({m: old for m in MODALITIES}, v)
        elif isinstance(v, Mapping) and isinstance(old, dict):
            res[k] = _merge(old, v)
        else:
            res[k] = copy.deepcopy(v)
    return res


def parse_override(text: str) -> Dict[str, Any]:
    """``"m2vae.alpha_reenc=0"`` → ``{"m2vae": {"alpha_reenc": 0}}`` (value parsed as YAML)."""
    import yaml

    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. m2vae.alpha_reenc=0")
    key, value = text.split("=", 1)
    try:
        val = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: cannot parse the value ({exc})") from None
    out: Dict[str, Any] = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = val
    return out


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults ← YAML file ← ``KEY=VALUE`` overrides, validated (see :func:`validate`).

    Raises:
        UserError: missing or unparsable file, or any :func:`validate` problem.
    """
    import yaml

    user: Dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"{path}: config file not found")
        try:
            with open(path) as f:
                user = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(user, Mapping):
            raise UserError(f"{path}: config must be a mapping of keys to values")
        validate(user, partial=True)
    for text in overrides:
        user = _merge(user, parse_override(text))
    validate(user, partial=True)
    cfg = _merge(DEFAULTS, user)
    return validate(cfg)


def stage_epochs(epochs: int, min_steps: int, n_samples: int, batch_size: int) -> int:
    """Epochs a stage runs: ``epochs``, raised so that at least ``min_steps`` optimiser steps are taken on a small
    data set (``ceil(n_samples / batch_size)`` steps per epoch). The defaults do not bind on the 20000-sample
    simulated set; on a 3000-sample rosbag set they give the networks the same number of updates."""
    per_epoch = max(1, math.ceil(n_samples / max(1, batch_size)))
    return max(int(epochs), math.ceil(int(min_steps) / per_epoch))


def beta_norm_for(cfg: Mapping, modality: str) -> float:
    """β-VAE ``β_norm`` of ``modality`` (``betavae.beta_norm`` is a number or a per-modality mapping; paper Sec.
    III-A: β = β_norm · D_x / D_z)."""
    b = cfg["betavae"]["beta_norm"]
    return float(b[modality]) if isinstance(b, Mapping) else float(b)


def epochs_for(cfg: Mapping, modality: str) -> int:
    """β-VAE epochs of ``modality`` (``betavae.epochs`` is an int or a per-modality mapping)."""
    e = cfg["betavae"]["epochs"]
    return int(e[modality]) if isinstance(e, Mapping) else int(e)
