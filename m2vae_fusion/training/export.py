"""ONNX model bundle, format v2/v3: export (torch → one ONNX file per network + the merged chain graphs + ``probes.npz``
+ ``manifest.json``), rebuild without torch, and verification.

The layout is the contract in ``docs/formats.md`` ("Model bundle"). Every export stores probe inputs and the torch
outputs for them, runs the written ONNX files with onnxruntime on the same inputs and fails when any output differs
by more than :data:`PARITY_TOL` (max abs). The chain graphs (:mod:`m2vae_fusion.core.chains`) are composed from the
written network files; their probes hold the per-network path's outputs. :func:`rebuild_bundle` rewrites any bundle
(format v1, v2 or v3, e.g. the shipped ones, which have no torch checkpoints) from its own ONNX files without torch;
:func:`export_from_checkpoint` re-exports from the torch checkpoint an export saved beside its bundle.
:func:`verify_bundle` repeats the checks later (sha256 of every file, the model id, probe parity, and parity of every
chain with the per-network path) without torch. :func:`compute_latent_bounds` records the latent ranges of a
training set (manifest ``latent_bounds``, format v3) through the bundle's own ONNX networks, so both the torch export
(``bounds_data``) and the torch-free rebuild (``export --from-bundle SRC --bounds-data DIR``) write them.
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from m2vae_fusion import __version__
from m2vae_fusion.core import chains as chainmod
from m2vae_fusion.core.bundle import (FORMAT, FORMAT_VERSION, FORMAT_VERSION_NO_BOUNDS,  # one definition,
                                      MARGIN_ABSOLUTE, MARGIN_FRACTION, READ_VERSIONS,  # shared with the runtime
                                      LatentBounds, compute_model_id, read_manifest_any, sha256_file,
                                      unimodal_head_files, upgrade_command)
from m2vae_fusion.core.bundle import OBJECTIVES
from m2vae_fusion.errors import BundleError
from m2vae_fusion.files import write_json

PARITY_TOL = 1e-4
OPSET = 17
PROBE_N = 4
#: the default objective (the manifest's ``objective``); a network trained with another objective carries its name
#: in ``.objective`` (m2vae_fusion.training.objectives), which the export records
OBJECTIVE = "m2vae"
#: the torch checkpoint an export writes beside its bundle directory: ``<out_dir>`` + this suffix
CHECKPOINT_SUFFIX = ".torch.pt"


class ParityError(BundleError):
    """ONNX and torch (or stored probe) outputs differ by more than the tolerance (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class ChecksumError(BundleError):
    """A bundle file is missing or its sha256 differs from the manifest (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


# --------------------------------------------------------------------------------------------------------- helpers

def objective_of(model) -> str:
    """The manifest's ``objective`` of a multimodal-VAE network: its ``objective`` attribute (set by
    :mod:`m2vae_fusion.training.objectives`), ``"m2vae"`` for a plain M2VAE.

    Raises:
        BundleError: an objective the runtime does not support (:data:`m2vae_fusion.core.bundle.OBJECTIVES`).
    """
    name = str(getattr(model, "objective", OBJECTIVE))
    if name not in OBJECTIVES:
        raise BundleError(f"objective {name!r} is not one the bundle format supports ({', '.join(OBJECTIVES)})")
    return name


def default_class_names() -> List[str]:
    """The 8 class names ``f"{colour}_{shape}_{material}"`` ordered by class id ``4·colour + 2·shape + material``."""
    try:  # the data set engineer's module is the source of truth when present
        from m2vae_fusion.data.classes import CLASS_NAMES  # type: ignore
        return list(CLASS_NAMES)
    except Exception:
        names = []
        for c in ("red", "green"):
            for s in ("cylinder", "cube"):
                for m in ("matte", "shiny"):
                    names.append(f"{c}_{s}_{m}")
        return names


def network_files(modalities: Sequence[str], subsets: Sequence[Sequence[str]], with_head: bool) -> Dict:
    """The manifest's ``networks`` block (file names per docs/formats.md)."""
    from m2vae_fusion.training.networks import subset_key
    return {
        "betavae_encoder": {m: f"betavae_{m}_encoder.onnx" for m in modalities},
        "betavae_decoder": {m: f"betavae_{m}_decoder.onnx" for m in modalities},
        "subset_encoder": {subset_key(s): f"m2vae_encoder_{subset_key(s)}.onnx" for s in subsets},
        "decoder": {m: f"m2vae_decoder_{m}.onnx" for m in modalities},
        "head": "head.onnx" if with_head else None,
    }


def _session(path: str):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def run_onnx(path: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run one ONNX file on named float32 inputs; returns ``{output name: array}``."""
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})
    return dict(zip(names, outs))


# ------------------------------------------------------------------------------------------------ export wrappers

def _wrappers(betavaes, m2vae, head):
    """(file, module, input names, output names, example inputs builder key) for every network."""
    import torch
    from torch import nn

    from m2vae_fusion.training.networks import subset_key

    class BetaEnc(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x):
            return self.v.encode(x)

    class BetaDec(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, z):
            return self.v.decode(z)

    class SubEnc(nn.Module):
        def __init__(self, model, subset):
            super().__init__()
            self.model, self.subset = model, tuple(subset)

        def forward(self, *xs):
            return self.model.encode(self.subset, dict(zip(self.subset, xs)))

    class Dec(nn.Module):
        def __init__(self, model, m):
            super().__init__()
            self.model, self.m = model, m

        def forward(self, z):
            return self.model.decode(self.m, z)

    class Head(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.h = h

        def forward(self, z):
            return self.h.probabilities(z)

    out = []
    for m, v in betavaes.items():
        out.append((f"betavae_{m}_encoder.onnx", BetaEnc(v), ["x"], ["mean", "log_variance"],
                    [("x", ("input", m))]))
        out.append((f"betavae_{m}_decoder.onnx", BetaDec(v), ["z"], ["x"], [("z", ("latent", v.latent_dim))]))
    for s in m2vae.subsets:
        key = subset_key(s)
        out.append((f"m2vae_encoder_{key}.onnx", SubEnc(m2vae, s), list(s), ["mean", "log_variance"],
                    [(m, ("feature", m)) for m in s]))
    for m in m2vae.modalities:
        out.append((f"m2vae_decoder_{m}.onnx", Dec(m2vae, m), ["z"], ["mean"], [("z", ("latent", m2vae.latent_dim))]))
    if head is not None:
        out.append(("head.onnx", Head(head), ["z"], ["probabilities"], [("z", ("latent", m2vae.latent_dim))]))
    del torch
    return out


def _probe_inputs(kind, betavaes, m2vae, rng, probe_data):
    """Deterministic probe inputs: stored real samples when given, else random values in the input's range."""
    what, arg = kind
    if what == "input":
        if probe_data and arg in probe_data.get("inputs", {}):
            return np.asarray(probe_data["inputs"][arg][:PROBE_N], np.float32)
        shape = betavaes[arg].input_shape
        return rng.uniform(0.0, 1.0, size=(PROBE_N, *shape)).astype(np.float32)
    if what == "feature":
        if probe_data and arg in probe_data.get("features", {}):
            return np.asarray(probe_data["features"][arg][:PROBE_N], np.float32)
        return rng.normal(size=(PROBE_N, m2vae.input_dims[arg])).astype(np.float32)
    if what == "latent":
        return rng.normal(size=(PROBE_N, int(arg))).astype(np.float32)
    raise ValueError(kind)


def _export_onnx(module, example: tuple, path: str, input_names, output_names) -> None:
    import torch
    dyn = {n: {0: "N"} for n in list(input_names) + list(output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, path, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dyn, opset_version=OPSET,
                          do_constant_folding=True)


def check_probe_parity(bundle_dir: str, manifest: Mapping, probes: Mapping[str, np.ndarray],
                       tol: Optional[float] = None) -> Dict[str, float]:
    """Run every ONNX file of the bundle on its stored probe inputs; compare with the stored (torch) outputs.

    Returns:
        ``{file: max abs difference}``.

    Raises:
        ParityError: naming the first file whose difference exceeds ``tol`` (or whose probes are missing).
    """
    tol = PARITY_TOL if tol is None else tol
    diffs: Dict[str, float] = {}
    for fname in sorted(f for f in manifest["files"] if f.endswith(".onnx")):
        sess = _session(os.path.join(bundle_dir, fname))
        inputs = {}
        for i in sess.get_inputs():
            key = f"{fname}:{i.name}"
            if key not in probes:
                raise ParityError(f"{fname}: probes.npz has no input {key!r}")
            inputs[i.name] = probes[key]
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, inputs)
        worst = 0.0
        for name, val in zip(names, outs):
            key = f"{fname}:{name}"
            if key not in probes:
                raise ParityError(f"{fname}: probes.npz has no output {key!r}")
            ref = probes[key]
            if ref.shape != val.shape:
                raise ParityError(f"{fname}: output {name!r} has shape {val.shape}, probe {ref.shape}")
            d = float(np.max(np.abs(ref.astype(np.float64) - val.astype(np.float64)))) if val.size else 0.0
            if not np.isfinite(d):
                d = float("inf")
            worst = max(worst, d)
        diffs[fname] = worst
        if worst > tol:
            raise ParityError(f"{fname}: onnxruntime output differs from the stored torch output by {worst:.3g} "
                              f"(tolerance {tol:g})")
    return diffs


# ---------------------------------------------------------------------------------------------------------- chains

def _subset_keys(manifest: Mapping) -> List[str]:
    return ["+".join(m for m in manifest["modalities"] if m in s) for s in manifest["subsets"]]


def _has_head(manifest: Mapping) -> bool:
    return bool(manifest["networks"].get("head")) and bool(manifest.get("class_names"))


def per_network_outputs(bundle_dir: str, manifest: Mapping, kind: str, key: str,
                        inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The reference for a chain: the same computation through the per-network files, one session per network.

    ``kind`` ``"decode"``: ``{"z"}`` → ``{m: decoder m (z)}`` for m in subset ``key``; ``"encode"``: ``{m: feature}``
    → ``mean``, ``log_variance`` of the subset encoder of ``key`` (and ``probabilities`` of the head on ``mean``).
    """
    nets = manifest["networks"]
    mods = key.split("+")
    if kind == chainmod.DECODE:
        return {m: run_onnx(os.path.join(bundle_dir, nets["decoder"][m]), {"z": inputs["z"]})["mean"] for m in mods}
    out = run_onnx(os.path.join(bundle_dir, nets["subset_encoder"][key]), {m: inputs[m] for m in mods})
    if _has_head(manifest):
        out["probabilities"] = run_onnx(os.path.join(bundle_dir, nets["head"]), {"z": out["mean"]})["probabilities"]
    return out


def add_chains(bundle_dir: str, manifest: Dict, probes: Dict[str, np.ndarray], seed: int = 0) -> Dict:
    """Compose the chain graphs of every subset from the network files in ``bundle_dir`` (no torch), set
    ``manifest["chains"]`` and add the chains' probes to ``probes``: the network files' stored probe inputs
    (random ones where missing) and, as expected outputs, the per-network path's onnxruntime outputs.

    Returns:
        the ``chains`` block.
    """
    rng = np.random.default_rng(seed)
    keys = _subset_keys(manifest)
    nets = manifest["networks"]
    n_classes = len(manifest["class_names"]) if _has_head(manifest) else None
    block = chainmod.build_chains(bundle_dir, manifest["modalities"], keys, nets, int(manifest["feature_dim"]),
                                  int(manifest["latent_dim"]), n_classes)

    def probe(name: str, dim: int) -> np.ndarray:
        return (np.asarray(probes[name], np.float32) if name in probes
                else rng.normal(size=(PROBE_N, dim)).astype(np.float32))

    for key in keys:
        mods = key.split("+")
        z = probe(f"{nets['decoder'][mods[0]]}:z", int(manifest["latent_dim"]))
        feats = {m: probe(f"{nets['subset_encoder'][key]}:{m}", int(manifest["feature_dim"])) for m in mods}
        for kind, inputs in ((chainmod.DECODE, {"z": z}), (chainmod.ENCODE, feats)):
            fname = block[kind][key]
            for name, a in inputs.items():
                probes[f"{fname}:{name}"] = a
            for name, a in per_network_outputs(bundle_dir, manifest, kind, key, inputs).items():
                probes[f"{fname}:{name}"] = a
    manifest["chains"] = block
    return block


def chain_parity(bundle_dir: str, manifest: Mapping, samples: int = 16, seed: int = 0) -> Dict[str, float]:
    """Max abs difference between every chain graph and the per-network path, recomputed now with onnxruntime on
    random inputs (latents ~ N(0, I), features ~ N(0, 4 I)) of ``samples`` rows.

    Returns:
        ``{chain file: max abs difference}``.
    """
    rng = np.random.default_rng(seed)
    diffs = {}
    dz, df = int(manifest["latent_dim"]), int(manifest["feature_dim"])
    for kind, block in sorted(manifest["chains"].items()):
        for key, fname in sorted(block.items()):
            if kind == chainmod.DECODE:
                inputs = {"z": rng.normal(size=(samples, dz)).astype(np.float32)}
            else:
                inputs = {m: rng.normal(0, 2, size=(samples, df)).astype(np.float32) for m in key.split("+")}
            got = run_onnx(os.path.join(bundle_dir, fname), inputs)
            ref = per_network_outputs(bundle_dir, manifest, kind, key, inputs)
            if set(got) != set(ref):
                raise ParityError(f"{os.path.join(bundle_dir, fname)}: outputs {sorted(got)}, per-network path "
                                  f"{sorted(ref)}")
            d = max(float(np.max(np.abs(got[k].astype(np.float64) - ref[k]))) for k in ref)
            diffs[fname] = d if np.isfinite(d) else float("inf")
    return diffs


def _finish_manifest(manifest: Dict, files: Mapping[str, str]) -> Dict:
    manifest["files"] = dict(sorted(files.items()))
    bounds = manifest.get("latent_bounds") if manifest.get("format_version") == FORMAT_VERSION else None
    manifest["model_id"] = compute_model_id(manifest["files"], bounds)
    return manifest


def _write_manifest(dir_: str, manifest: Mapping) -> None:
    """Write ``dir_/manifest.json`` atomically: indented by 2, keys in ``manifest``'s order, a final newline, numbers
    as given (the bytes every export wrote, so rewriting an unchanged manifest changes nothing)."""
    write_json(os.path.join(dir_, "manifest.json"), manifest, nonfinite="keep")


# ---------------------------------------------------------------------------------------------------- latent bounds

def _bounds_arrays(bundle_dir: str, manifest: Mapping, data, split: str):
    """(preprocessed :class:`~m2vae_fusion.training.data.Split`, data set description) of ``data`` (a data set
    directory, read with :func:`m2vae_fusion.data.shards.load_split`, or a dict of raw shard arrays)."""
    from m2vae_fusion.core.preprocess import MODALITIES
    from m2vae_fusion.data import shards
    from m2vae_fusion.training.data import preprocess_split

    mods = list(manifest["modalities"])
    sensors = {m: dict(manifest["inputs"][m]["preprocessing"]) for m in mods}
    if isinstance(data, (str, os.PathLike)):
        meta = shards.read_metadata(str(data))
        arrays = shards.load_split(str(data), split)
        all_mods = list(meta.get("modalities") or MODALITIES)
        missing = [m for m in mods if m not in all_mods]
        if missing:
            raise BundleError(f"{os.path.join(str(data), 'metadata.json')}: data set has no modality {missing}")
        info = {"dir": os.path.basename(os.path.normpath(str(data))), "seed": meta.get("seed"),
                "source": meta.get("source"), "samples": int(sum((meta.get("splits") or {}).values()))}
        where = f"{data} ({split})"
    else:
        arrays, all_mods, info, where = dict(data), list(MODALITIES), {"dir": None}, "bounds data"
    split_data = preprocess_split(arrays, sensors, mods, all_mods, where=where)
    if len(split_data) == 0:
        raise BundleError(f"{where}: no samples to compute latent bounds from")
    return split_data, info


def compute_latent_bounds(bundle_dir: str, manifest: Mapping, data, *, split: str = "train", batch: int = 512,
                          margin_fraction: float = MARGIN_FRACTION, margin_absolute: float = MARGIN_ABSOLUTE) -> Dict:
    """The manifest's ``latent_bounds`` block (docs/formats.md, format v3) from a data set, without torch.

    Every sample of ``split`` is preprocessed with the bundle's configs and encoded by the bundle's β-VAE encoders
    (ONNX, feature = encoder mean); then, for every subset S of the modalities the sample holds, by the subset
    encoder q_S (FUSION 2019, Fig. 2c). Per latent dimension, the minimum and maximum of the means and of the
    log-variances over all these subset encodings are recorded (``log_variance_min`` is the training maximum
    precision ``1 / exp(log_variance_min)``), with the margins the runtime adds to the mean range.

    Args:
        bundle_dir: a directory holding the bundle's network files (``manifest["networks"]``).
        manifest: the bundle's manifest (modalities, inputs, subsets, networks, latent_dim).
        data: a data set directory (``m2vae-fusion dataset --out``) or a dict of raw shard arrays (``load_split``
            layout; modality columns of ``present`` in the canonical order).
        split: which split of a data set directory (``"train"``: the networks' training split).
        batch: rows per onnxruntime run.

    Returns:
        ``{"mean_min", "mean_max", "log_variance_min", "log_variance_max": [Dz floats], "margin_fraction",
        "margin_absolute", "data": {"split", "samples", "encodings", "dataset": {...}}}``.

    Raises:
        UserError/BundleError: unreadable data set (names the file), no samples, or non-finite encodings.
    """
    split_data, info = _bounds_arrays(bundle_dir, manifest, data, split)
    mods = list(manifest["modalities"])
    nets = manifest["networks"]
    n = len(split_data)
    feats = {}
    for m in mods:
        sess = _session(os.path.join(bundle_dir, nets["betavae_encoder"][m]))
        x = split_data.inputs[m]
        feats[m] = np.concatenate([sess.run(["mean"], {"x": np.ascontiguousarray(x[a:a + batch])})[0]
                                   for a in range(0, n, batch)])
    dz = int(manifest["latent_dim"])
    lo, hi = np.full(dz, np.inf), np.full(dz, -np.inf)
    lv_lo, lv_hi = np.full(dz, np.inf), np.full(dz, -np.inf)
    encodings = 0
    for key in _subset_keys(manifest):
        sub = key.split("+")
        rows = np.flatnonzero(split_data.present[:, [mods.index(m) for m in sub]].all(axis=1))
        if rows.size == 0:
            continue
        sess = _session(os.path.join(bundle_dir, nets["subset_encoder"][key]))
        for a in range(0, rows.size, batch):
            idx = rows[a:a + batch]
            mean, logvar = sess.run(["mean", "log_variance"], {m: np.ascontiguousarray(feats[m][idx]) for m in sub})
            if not (np.isfinite(mean).all() and np.isfinite(logvar).all()):
                raise BundleError(f"{os.path.join(bundle_dir, nets['subset_encoder'][key])}: non-finite encodings "
                                  "of the bounds data")
            lo, hi = np.minimum(lo, mean.min(0)), np.maximum(hi, mean.max(0))
            lv_lo, lv_hi = np.minimum(lv_lo, logvar.min(0)), np.maximum(lv_hi, logvar.max(0))
            encodings += idx.size
    if encodings == 0:
        raise BundleError("bounds data: no sample holds any modality of the bundle")
    block = {"mean_min": [float(v) for v in lo.astype(np.float32)],
             "mean_max": [float(v) for v in hi.astype(np.float32)],
             "log_variance_min": [float(v) for v in lv_lo.astype(np.float32)],
             "log_variance_max": [float(v) for v in lv_hi.astype(np.float32)],
             "margin_fraction": float(margin_fraction), "margin_absolute": float(margin_absolute),
             "data": {"split": split, "samples": n, "encodings": int(encodings), "dataset": info}}
    LatentBounds(block, dz, "computed latent_bounds")  # same checks as the loader
    return block


def _set_bounds(manifest: Dict, block: Optional[Mapping]) -> Dict:
    """Set (or drop, for None) ``latent_bounds`` and the format version it implies (3 with bounds, 2 without)."""
    if block is None:
        manifest.pop("latent_bounds", None)
        manifest["format_version"] = FORMAT_VERSION_NO_BOUNDS
    else:
        manifest["latent_bounds"] = dict(block)
        manifest["format_version"] = FORMAT_VERSION
    return manifest


def add_latent_bounds(bundle_dir: str, data, split: str = "train") -> Dict:
    """Compute ``latent_bounds`` for the bundle in ``bundle_dir`` from ``data`` (see :func:`compute_latent_bounds`)
    and rewrite its manifest as format v3 (new ``model_id``; every file is kept byte for byte). No torch.

    Returns:
        the new manifest.

    Raises:
        BundleError: not a readable bundle, changed files (sums), or bad bounds data.
    """
    from m2vae_fusion.core.bundle import read_manifest as _read, verify_sums

    manifest = _read(bundle_dir)
    verify_sums(bundle_dir, manifest)
    _set_bounds(manifest, compute_latent_bounds(bundle_dir, manifest, data, split=split))
    manifest = _order_manifest(_finish_manifest(manifest, manifest["files"]))
    _write_manifest(bundle_dir, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------- novelty

#: components of the ``feature_mixture`` novelty statistic (one per class of the hard world), capped at one per
#: :data:`MIXTURE_SAMPLES_PER_COMPONENT` fitting samples
MIXTURE_COMPONENTS = 27
MIXTURE_SAMPLES_PER_COMPONENT = 140
#: fitting samples drawn (seeded) from a data set's train split for the mixture
MIXTURE_FIT_SAMPLES = 4000


def _fit_mixture(features: np.ndarray, components: int, seed: int):
    """Gaussian mixture (scikit-learn, full covariances, k-means initialisation, ``seed``) of encoder means float
    (N, D*) → :class:`m2vae_fusion.core.novelty.Mixture`; K = min(``components``, N // 140), at least 1."""
    from sklearn.mixture import GaussianMixture

    from m2vae_fusion.core.novelty import Mixture

    k = max(1, min(int(components), len(features) // MIXTURE_SAMPLES_PER_COMPONENT))
    g = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(features)
    return Mixture(g.weights_ / g.weights_.sum(), g.means_, g.precisions_)


def compute_novelty_block(bundle_dir: str, manifest: Mapping, data, *, split: str = "val", batch: int = 256,
                          tail: Optional[float] = None, statistics: Optional[Sequence[str]] = None,
                          fit_data=None, mixture_components: int = MIXTURE_COMPONENTS, seed: int = 0) -> Dict:
    """The manifest's ``novelty`` block (docs/formats.md, :mod:`m2vae_fusion.core.novelty`) from in-distribution
    data, without torch.

    Every sample of ``split`` holding modality m is preprocessed with the bundle's configs and run through m's β-VAE
    encoder and decoder (ONNX); each of ``statistics`` (default :data:`m2vae_fusion.core.novelty.DEFAULT_STATISTICS`:
    the KL of the posterior to N(0, I) and the feature distance; ``reconstruction_error`` may be added) gets its
    calibration interval (quantiles ``tail`` and ``1 − tail`` of its logarithm). Also recorded per
    modality: ``feature_std`` (per-dimension spread of the encoder means, the unit of the accumulation's outlier
    gate) and ``precision_max`` (highest posterior precision per dimension, the cap of accumulated precision).
    ``feature_mixture`` (a default statistic) is a Gaussian mixture of encoder means fitted on ``fit_data`` (default:
    up to 4,000 samples of the data set's train split drawn with ``seed``; for a dict ``data``, ``data`` itself) and
    calibrated, like the others, on ``split``.

    Args:
        data: a data set directory or a dict of raw shard arrays (as :func:`compute_latent_bounds`).
        split: which split (``"val"``: held-out in-distribution data, not the networks' training split).
        fit_data: data (directory: its train split; or a dict) the mixture is fitted on (default above).
        mixture_components: mixture components (capped at one per 140 fitting samples).

    Raises:
        BundleError: no β-VAE decoder for a modality, unreadable data, fewer than 20 samples of a modality, or
            non-finite statistics.
    """
    from m2vae_fusion.core import novelty

    tail = novelty.DEFAULT_TAIL if tail is None else float(tail)
    names = tuple(statistics or novelty.DEFAULT_STATISTICS)
    if not names or not set(names) <= set(novelty.STATISTICS):
        raise BundleError(f"novelty statistics {list(names)} must be a non-empty subset of {list(novelty.STATISTICS)}")
    split_data, info = _bounds_arrays(bundle_dir, manifest, data, split)
    fit_split = fit_info = None
    if "feature_mixture" in names:
        if fit_data is None:
            fit_data, fit_name = (data, "train") if isinstance(data, (str, os.PathLike)) else (data, split)
        else:
            fit_name = "train"
        fit_split, fit_info = (split_data, info) if fit_data is data and fit_name == split else \
            _bounds_arrays(bundle_dir, manifest, fit_data, fit_name)
        fit_info = {"split": fit_name if isinstance(fit_data, (str, os.PathLike)) else None, **fit_info}
    mods = list(manifest["modalities"])
    nets = manifest["networks"]
    entries = {}
    for i, m in enumerate(mods):
        enc_s = _session(os.path.join(bundle_dir, nets["betavae_encoder"][m]))
        dec_s = None
        if "reconstruction_error" in names:
            dec = (nets.get("betavae_decoder") or {}).get(m)
            if not dec:
                raise BundleError(f"{os.path.join(bundle_dir, 'manifest.json')}: no β-VAE decoder for {m}: the "
                                  "reconstruction_error statistic needs it")
            dec_s = _session(os.path.join(bundle_dir, dec))
        x_all = split_data.inputs[m][split_data.present[:, i]]
        stats = {k: [] for k in names if k != "feature_distance"}
        mus, lvs = [], []
        for a in range(0, len(x_all), batch):
            x = np.ascontiguousarray(x_all[a:a + batch])
            mu, lv = enc_s.run(["mean", "log_variance"], {"x": x})
            rec = None if dec_s is None else dec_s.run(None, {dec_s.get_inputs()[0].name: mu})[0]
            for k, v in novelty.statistics(x, mu, lv, rec).items():
                if k in stats:
                    stats[k].append(v)
            mus.append(mu)
            lvs.append(lv)
        if not mus:
            raise BundleError(f"novelty data ({split}): no sample holds {m}")
        mu, lv = np.concatenate(mus), np.concatenate(lvs)
        f_mean, f_prec = novelty.fit_features(mu)
        stats = {k: np.concatenate(v) for k, v in stats.items() if v}
        c = mu.astype(np.float64) - f_mean
        stats["feature_distance"] = np.einsum("nd,de,ne->n", c, f_prec, c)
        mixture = None
        if "feature_mixture" in names:
            fx = fit_split.inputs[m][fit_split.present[:, i]]
            if len(fx) > MIXTURE_FIT_SAMPLES:
                fx = fx[np.sort(np.random.default_rng(seed).choice(len(fx), MIXTURE_FIT_SAMPLES, replace=False))]
            fmu = np.concatenate([enc_s.run(["mean"], {"x": np.ascontiguousarray(fx[a:a + batch])})[0]
                                  for a in range(0, len(fx), batch)] or [np.zeros((0, mu.shape[1]), np.float32)])
            if len(fmu) < 20:
                raise BundleError(f"novelty mixture data: {len(fmu)} samples hold {m} (at least 20 needed)")
            mixture = _fit_mixture(fmu.astype(np.float64), mixture_components, seed)
            stats["feature_mixture"] = mixture.statistic(mu)
        try:
            entry = novelty.calibrate(stats, tail, names)
        except ValueError as exc:
            raise BundleError(f"novelty data ({split}), {m}: {exc}") from None
        if mixture is not None:
            entry["mixture"] = mixture.to_json()
            entry["mixture_fit"] = {"samples": int(len(fmu)), "components": int(len(mixture.weights)),
                                    "seed": int(seed)}
        entry["feature_mean"] = [float(v) for v in f_mean]
        entry["feature_precision"] = [[float(v) for v in row] for row in f_prec]
        entry["feature_std"] = [float(v) for v in np.maximum(mu.std(axis=0), 1e-6)]
        entry["precision_max"] = [float(v) for v in np.exp(-lv.min(axis=0))]
        entries[m] = entry
    described = {"split": split, "samples": len(split_data), "dataset": info}
    if fit_info is not None:
        described["mixture_fit"] = fit_info
    return novelty.make_block(entries, tail=tail, names=names, data=described)


def add_novelty_calibration(bundle_dir: str, data, split: str = "val", tail: Optional[float] = None,
                            statistics: Optional[Sequence[str]] = None, fit_data=None) -> Dict:
    """Compute the ``novelty`` block (:func:`compute_novelty_block`) for the bundle in ``bundle_dir`` and rewrite its
    manifest with it (every file kept byte for byte; the format version and ``model_id`` do not change: the block is
    optional and does not change the latent space). No torch.

    Returns:
        the new manifest.

    Raises:
        BundleError: not a readable bundle, changed files (sums), or bad calibration data.
    """
    from m2vae_fusion.core.bundle import read_manifest as _read, verify_sums

    manifest = _read(bundle_dir)
    verify_sums(bundle_dir, manifest)
    manifest["novelty"] = compute_novelty_block(bundle_dir, manifest, data, split=split, tail=tail,
                                                statistics=statistics, fit_data=fit_data)
    manifest = _order_manifest(manifest)
    _write_manifest(bundle_dir, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------------- rebuild

def rebuild_bundle(src_dir: str, out_dir: str, tol: Optional[float] = None, bounds_data=None,
                   bounds_split: str = "train") -> str:
    """Rewrite the bundle in ``src_dir`` (format v1, v2 or v3) in ``out_dir`` (may be the same directory) from its own
    ONNX files, without torch and without retraining: the network files are copied byte for byte (same latent space,
    same outputs), the chain graphs and their probes are rebuilt, the manifest is rewritten (``model_id`` changes
    when the chain files, the probes or the latent bounds do).

    Args:
        bounds_data: a data set directory (or raw shard arrays) to compute ``latent_bounds`` from
            (:func:`compute_latent_bounds`, split ``bounds_split``); the result is format v3. None: a v3 source's
            bounds are kept (format v3), a v1/v2 source gives format v2 (no bounds).

    Raises:
        BundleError: not a bundle, or a network file missing or not matching its sha256 (names the file).
        ParityError: a chain differs from the per-network path by more than ``tol`` (nothing is replaced then).
    """
    tol = PARITY_TOL if tol is None else tol
    src = read_manifest_any(src_dir)
    mpath = os.path.join(src_dir, "manifest.json")
    version = src.get("format_version")
    if type(version) is not int or version not in (1, *READ_VERSIONS):
        raise BundleError(f"{mpath}: unknown format_version {version!r}; can rebuild 1, "
                          f"{', '.join(map(str, READ_VERSIONS))}")
    if version == FORMAT_VERSION:
        if "latent_bounds" not in src:
            raise BundleError(f"{mpath}: format_version {version} without latent_bounds")
        LatentBounds(src["latent_bounds"], int(src.get("latent_dim", 0)), mpath)
    for key in ("modalities", "inputs", "feature_dim", "latent_dim", "subsets", "networks", "files"):
        if key not in src:
            raise BundleError(f"{mpath}: key {key!r} missing")
    objective = src.get("objective", OBJECTIVE)
    if objective not in OBJECTIVES:
        raise BundleError(f"{mpath}: objective {objective!r}; this exporter rebuilds {', '.join(OBJECTIVES)}")
    nets = src["networks"]
    network_names = sorted({*nets["betavae_encoder"].values(), *nets.get("betavae_decoder", {}).values(),
                            *nets["subset_encoder"].values(), *nets["decoder"].values(),
                            *([nets["head"]] if nets.get("head") else [])})
    probes_name = src.get("probes", "probes.npz")
    for name in network_names + [probes_name]:
        p = os.path.join(src_dir, name)
        if not os.path.isfile(p):
            raise ChecksumError(f"{p}: missing (listed in {mpath})")
        if name in src["files"] and sha256_file(p) != src["files"][name]:
            raise ChecksumError(f"{p}: sha256 does not match {mpath}; refusing to rebuild from a changed file")
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".rebuild-", dir=out_dir)
    try:
        for name in network_names:
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(tmp, name))
        extra = unimodal_head_files(src, src_dir)
        for name, expected in extra.items():  # optional block: kept as it is
            p = os.path.join(src_dir, name)
            if not os.path.isfile(p) or sha256_file(p) != expected:
                raise ChecksumError(f"{p}: missing or not matching its sha256 in {mpath} (unimodal_heads)")
            shutil.copyfile(p, os.path.join(tmp, name))
        old = dict(np.load(os.path.join(src_dir, probes_name)))
        # keep the networks' probes (the torch outputs of the original export); chain probes are rebuilt
        probes = {k: v for k, v in old.items() if k.split(":", 1)[0] in network_names}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION_NO_BOUNDS, "objective": objective}
        manifest.update({k: v for k, v in src.items() if k not in ("format", "format_version", "objective",
                                                                    "model_id", "files", "chains", "probes",
                                                                    "latent_bounds")})
        manifest["probes"] = "probes.npz"
        ck = src.get("checkpoint")
        if isinstance(ck, dict) and ck.get("file"):  # keep pointing at the same checkpoint file from out_dir
            ck_abs = os.path.normpath(os.path.join(os.path.abspath(src_dir), ck["file"]))
            manifest["checkpoint"] = {**ck, "file": os.path.relpath(ck_abs, os.path.abspath(out_dir))}
        else:
            manifest["checkpoint"] = None
        manifest["rebuilt"] = {"from_format_version": version, "from_model_id": src.get("model_id"),
                               "package_version": __version__,
                               "at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        add_chains(tmp, manifest, probes)
        np.savez(os.path.join(tmp, "probes.npz"), **probes)
        if bounds_data is not None:
            _set_bounds(manifest, compute_latent_bounds(tmp, manifest, bounds_data, split=bounds_split))
        elif version == FORMAT_VERSION:
            _set_bounds(manifest, src["latent_bounds"])
        manifest = _order_manifest(_finish_manifest(manifest, {n: sha256_file(os.path.join(tmp, n))
                                                               for n in sorted(os.listdir(tmp)) if n not in extra}))
        check_probe_parity(tmp, manifest, dict(np.load(os.path.join(tmp, "probes.npz"))), tol=tol)
        worst = chain_parity(tmp, manifest)
        bad = {k: v for k, v in worst.items() if v > tol}
        if bad:
            k = sorted(bad)[0]
            raise ParityError(f"{k}: chain differs from the per-network path by {bad[k]:.3g} (tolerance {tol:g})")
        _write_manifest(tmp, manifest)
        _replace_bundle(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


_KEY_ORDER = ("format", "format_version", "objective", "model_id", "package_version", "created", "modalities",
              "inputs", "feature_dim", "latent_dim", "subsets", "class_names", "networks", "chains", "files", "probes",
              "latent_bounds", "checkpoint", "rebuilt", "training")


def _order_manifest(manifest: Mapping) -> Dict:
    """The manifest's keys in the documented order (unknown keys after them)."""
    out = {k: manifest[k] for k in _KEY_ORDER if k in manifest}
    out.update({k: v for k, v in manifest.items() if k not in out})
    return out


# ---------------------------------------------------------------------------------------------------------- export

def export_bundle(out_dir: str, betavaes: Mapping, m2vae, head=None, *, sensors: Mapping,
                  class_names: Optional[Sequence[str]] = None, training: Optional[Mapping] = None,
                  probe_data: Optional[Mapping] = None, seed: int = 0, checkpoint: Optional[str] = "beside",
                  bounds_data=None) -> str:
    """Write a model bundle (docs/formats.md; format v3 with ``bounds_data``, else v2) to ``out_dir`` and check
    ONNX/torch and chain parity.

    Args:
        out_dir: bundle directory (created; bundle files of an earlier export there are replaced).
        betavaes: ``{modality: BetaVAE}`` in modality order.
        m2vae: the :class:`~m2vae_fusion.training.networks.M2VAE` over the same modalities.
        head: :class:`~m2vae_fusion.training.networks.ClassHead` or ``None`` (trained without labels).
        sensors: preprocessing config per modality (copied to ``inputs.<m>.preprocessing``).
        class_names: head's class names (required when ``head`` is given).
        training: ``{"config": ..., "metrics": ..., "dataset": ...}`` for the manifest.
        probe_data: optional ``{"inputs": {m: (n, *shape)}, "features": {m: (n, D_*)}}`` real probe samples.
        seed: seed of the random probe inputs.
        checkpoint: where to save the torch networks so :func:`export_from_checkpoint` can re-export the bundle
            without retraining: ``"beside"`` (default) → ``<out_dir>`` + :data:`CHECKPOINT_SUFFIX` next to the bundle
            directory (outside it, so the bundle a robot installs stays small), a file path, or None (not saved).
        bounds_data: the training data set directory (or its raw train-split arrays) to compute the manifest's
            ``latent_bounds`` from (:func:`compute_latent_bounds` on the written networks; format v3). None: no
            bounds (format v2).

    Returns:
        ``out_dir``.

    Raises:
        ParityError: an ONNX file's outputs differ from torch's, or a chain's from the per-network path, by more
            than :data:`PARITY_TOL`.
    """
    import torch

    from m2vae_fusion.core.preprocess import input_shape

    modalities = list(m2vae.modalities)
    if list(betavaes) != modalities:
        raise ValueError(f"β-VAE modalities {list(betavaes)} differ from the M2VAE's {modalities}")
    if head is not None and not class_names:
        raise ValueError("a head needs class_names")
    rng = np.random.default_rng(seed)
    for mod in [*betavaes.values(), m2vae, head]:
        if mod is not None:
            mod.eval()
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        probes: Dict[str, np.ndarray] = {}
        files: Dict[str, str] = {}
        with torch.no_grad():
            for fname, module, in_names, out_names, in_kinds in _wrappers(betavaes, m2vae, head):
                arrays = [_probe_inputs(kind, betavaes, m2vae, rng, probe_data) for _, kind in in_kinds]
                tensors = tuple(torch.from_numpy(a) for a in arrays)
                outs = module(*tensors)
                if isinstance(outs, torch.Tensor):
                    outs = (outs,)
                for n, a in zip(in_names, arrays):
                    probes[f"{fname}:{n}"] = a
                for n, o in zip(out_names, outs):
                    probes[f"{fname}:{n}"] = o.detach().cpu().numpy().astype(np.float32)
                _export_onnx(module, tensors, os.path.join(tmp, fname), in_names, out_names)
        subsets = [list(s) for s in m2vae.subsets]
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION_NO_BOUNDS, "objective": objective_of(m2vae),
            "model_id": None,
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "modalities": modalities,
            "inputs": {m: {"shape": list(input_shape(m, sensors[m])), "dtype": "float32",
                           "preprocessing": dict(sensors[m])} for m in modalities},
            "feature_dim": int(next(iter(betavaes.values())).latent_dim),
            "latent_dim": int(m2vae.latent_dim),
            "subsets": subsets,
            "class_names": list(class_names) if head is not None else None,
            "networks": network_files(modalities, subsets, head is not None),
            "chains": None,
            "files": None,
            "probes": "probes.npz",
            "checkpoint": None,
            "training": dict(training or {}),
        }
        add_chains(tmp, manifest, probes, seed=seed)
        np.savez(os.path.join(tmp, "probes.npz"), **probes)
        if bounds_data is not None:
            _set_bounds(manifest, compute_latent_bounds(tmp, manifest, bounds_data))
        for fname in sorted(os.listdir(tmp)):
            files[fname] = sha256_file(os.path.join(tmp, fname))
        manifest = _order_manifest(_finish_manifest(manifest, files))
        # parity before anything replaces an existing bundle
        check_probe_parity(tmp, manifest, dict(np.load(os.path.join(tmp, "probes.npz"))), tol=PARITY_TOL)
        worst = chain_parity(tmp, manifest)
        bad = {k: v for k, v in worst.items() if v > PARITY_TOL}
        if bad:
            k = sorted(bad)[0]
            raise ParityError(f"{k}: chain differs from the per-network path by {bad[k]:.3g} "
                              f"(tolerance {PARITY_TOL:g})")
        if checkpoint:
            ck_path = (os.path.normpath(os.path.abspath(out_dir)) + CHECKPOINT_SUFFIX if checkpoint == "beside"
                       else os.path.abspath(checkpoint))
            ck_tmp = ck_path + ".tmp"
            torch.save({"format": "m2vae_fusion.checkpoint", "format_version": 1, "objective": objective_of(m2vae),
                        "betavaes": dict(betavaes), "m2vae": m2vae, "head": head, "sensors": dict(sensors),
                        "class_names": list(class_names) if class_names else None,
                        "training": dict(training or {}), "probe_data": probe_data, "seed": seed}, ck_tmp)
            os.replace(ck_tmp, ck_path)
            manifest["checkpoint"] = {"file": os.path.relpath(ck_path, os.path.abspath(out_dir)),
                                      "sha256": sha256_file(ck_path)}
        _write_manifest(tmp, manifest)
        _replace_bundle(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_from_checkpoint(checkpoint: str, out_dir: str, bounds_data=None) -> str:
    """Re-export a bundle from the torch checkpoint an earlier :func:`export_bundle` saved (no retraining): the same
    networks, probes and training record, written in the current format; the checkpoint is saved again beside
    ``out_dir``.

    Raises:
        BundleError: the file is missing or not an m2vae_fusion checkpoint (names the file).
    """
    import torch

    if not os.path.isfile(checkpoint):
        raise BundleError(f"{checkpoint}: no such checkpoint file")
    try:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BundleError(f"{checkpoint}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != "m2vae_fusion.checkpoint":
        raise BundleError(f"{checkpoint}: not an m2vae_fusion checkpoint (written by export beside a bundle)")
    if ck.get("objective", OBJECTIVE) != objective_of(ck.get("m2vae")):
        raise BundleError(f"{checkpoint}: objective {ck.get('objective')!r} differs from its networks' "
                          f"{objective_of(ck.get('m2vae'))!r}")
    return export_bundle(out_dir, ck["betavaes"], ck["m2vae"], ck["head"], sensors=ck["sensors"],
                         class_names=ck["class_names"], training=ck["training"], probe_data=ck["probe_data"],
                         seed=int(ck["seed"]), checkpoint="beside", bounds_data=bounds_data)


def _replace_bundle(src: str, out_dir: str) -> None:
    """Move the files of a finished export into ``out_dir``; bundle files of an older export there are removed
    (manifest first, so a half-replaced directory is never taken for a bundle)."""
    old = os.path.join(out_dir, "manifest.json")
    if os.path.exists(old):
        os.remove(old)
    for name in os.listdir(out_dir):
        p = os.path.join(out_dir, name)
        if os.path.isfile(p) and (name.endswith(".onnx") or name == "probes.npz"):
            os.remove(p)
    names = sorted(os.listdir(src))
    for name in [n for n in names if n != "manifest.json"] + ["manifest.json"]:
        os.replace(os.path.join(src, name), os.path.join(out_dir, name))


def export_untrained(out_dir: str, seed: int = 0, feature_dim: int = 10, latent_dim: int = 10,
                     sensors: Optional[Mapping] = None, modalities: Optional[Sequence[str]] = None,
                     checkpoint: Optional[str] = None, bounds_data=None) -> str:
    """Export randomly initialised networks (β-VAEs for camera/lidar/reflectance, the M2VAE and a class-belief head
    over the 8 class names) as a complete bundle, e.g. for testing the runtime and the ROS nodes before training.

    Args:
        out_dir: bundle directory.
        seed: torch and probe seed (same seed → same weights and probes).
        feature_dim: ``D_*`` (β-VAE latent size).
        latent_dim: ``D_z`` (M2VAE latent size).
        sensors: preprocessing configs per modality; defaults to
            :data:`m2vae_fusion.core.preprocess.DEFAULT_CONFIGS`.
        modalities: subset of the modalities (default all three, in bundle order).
        checkpoint: as in :func:`export_bundle`; default None (not saved: the seed reproduces the weights).
        bounds_data: as in :func:`export_bundle` (None: format v2 without bounds).

    Returns:
        ``out_dir``.
    """
    import torch

    from m2vae_fusion.core.preprocess import DEFAULT_CONFIGS, MODALITIES
    from m2vae_fusion.training.networks import M2VAE, BetaVAE, ClassHead

    if feature_dim <= 0 or latent_dim <= 0:
        raise ValueError("feature_dim and latent_dim must be positive")
    mods = [m for m in MODALITIES if m in (modalities or MODALITIES)]
    cfg = {m: dict((sensors or {}).get(m, DEFAULT_CONFIGS[m])) for m in mods}
    torch.manual_seed(seed)
    betavaes = {m: BetaVAE(m, cfg[m], feature_dim) for m in mods}
    m2vae = M2VAE(mods, {m: feature_dim for m in mods}, latent_dim)
    names = default_class_names()
    head = ClassHead(latent_dim, len(names))
    training = {"config": {"untrained": True, "seed": seed, "feature_dim": feature_dim, "latent_dim": latent_dim},
                "metrics": {}, "dataset": None}
    return export_bundle(out_dir, betavaes, m2vae, head, sensors=cfg, class_names=names, training=training,
                         seed=seed, checkpoint=checkpoint, bounds_data=bounds_data)


# ---------------------------------------------------------------------------------------------------------- verify

def read_manifest(bundle_dir: str) -> Dict:
    """Load and schema-check ``bundle_dir/manifest.json`` (format v2 or v3, as the runtime reads it; a v1 bundle is
    refused with the upgrade command); raises :class:`BundleError` naming the file."""
    from m2vae_fusion.core.bundle import read_manifest as _read

    manifest = _read(bundle_dir)
    if "probes" not in manifest:
        raise BundleError(f"{os.path.join(bundle_dir, 'manifest.json')}: key 'probes' missing")
    return manifest


def verify_bundle(bundle_dir: str, tol: Optional[float] = None) -> Dict:
    """Re-check a bundle: every file's sha256, the model id, that every network and chain file is listed, probe
    parity (onnxruntime on the stored inputs vs the stored torch outputs; for chains, the per-network path's outputs)
    and parity of every chain with the per-network path recomputed now on random inputs.

    Returns:
        ``{"model_id", "format_version", "objective", "files": n, "max_abs_diff": {file: d},
        "chain_vs_networks": {chain file: d}}``.

    Raises:
        BundleError: no or malformed manifest (exit 2).
        ChecksumError: a missing file, a sha256 or model id mismatch (exit 1, names the file).
        ParityError: a probe mismatch (exit 1, names the file).
    """
    manifest = read_manifest(bundle_dir)
    files = manifest["files"]
    for name, digest in sorted(files.items()):
        p = os.path.join(bundle_dir, name)
        if not os.path.isfile(p):
            raise ChecksumError(f"{p}: listed in manifest.json but missing")
        actual = sha256_file(p)
        if actual != digest:
            raise ChecksumError(f"{p}: sha256 {actual[:12]}… does not match manifest.json ({str(digest)[:12]}…)")
    nets = manifest["networks"]
    listed = [*nets["betavae_encoder"].values(), *nets["betavae_decoder"].values(),
              *nets["subset_encoder"].values(), *nets["decoder"].values()]
    if nets.get("head"):
        listed.append(nets["head"])
    for kind in (chainmod.DECODE, chainmod.ENCODE):
        block = manifest["chains"][kind]
        missing = [k for k in _subset_keys(manifest) if k not in block]
        if missing:
            raise BundleError(f"{os.path.join(bundle_dir, 'manifest.json')}: no {kind} chain for {missing}")
        listed += list(block.values())
    for name in listed + [manifest["probes"]]:
        if name not in files:
            raise ChecksumError(f"{os.path.join(bundle_dir, name)}: network file not listed in manifest.json files")
    bounds = manifest.get("latent_bounds") if manifest["format_version"] == FORMAT_VERSION else None
    expect = compute_model_id(files, bounds)
    if manifest["model_id"] != expect:
        raise ChecksumError(f"{os.path.join(bundle_dir, 'manifest.json')}: model_id {manifest['model_id']!r} does "
                            f"not match the files ({expect!r})")
    try:
        probes = dict(np.load(os.path.join(bundle_dir, manifest["probes"])))
    except Exception as exc:  # corrupt npz with a matching sum cannot happen unless the manifest was edited too
        raise ChecksumError(f"{os.path.join(bundle_dir, manifest['probes'])}: unreadable ({exc})") from None
    diffs = check_probe_parity(bundle_dir, manifest, probes, tol)
    chain = chain_parity(bundle_dir, manifest)
    tol_ = PARITY_TOL if tol is None else tol
    for fname, d in sorted(chain.items()):
        if d > tol_:
            raise ParityError(f"{os.path.join(bundle_dir, fname)}: chain differs from the per-network path by "
                              f"{d:.3g} (tolerance {tol_:g})")
    return {"model_id": manifest["model_id"], "format_version": manifest["format_version"],
            "objective": manifest["objective"], "files": len(files), "max_abs_diff": diffs, "chain_vs_networks": chain,
            "latent_bounds": bounds}
