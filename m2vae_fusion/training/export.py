"""ONNX model bundle: export (torch → one ONNX file per network + ``probes.npz`` + ``manifest.json``) and verification.

The layout is the contract in ``docs/formats.md`` ("Model bundle"). Every export stores probe inputs and the torch
outputs for them, runs the written ONNX files with onnxruntime on the same inputs and fails when any output differs
by more than :data:`PARITY_TOL` (max abs). :func:`verify_bundle` repeats the check later (sha256 of every file, the
model id and probe parity) without torch.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from m2vae_fusion import __version__
from m2vae_fusion.core.bundle import compute_model_id, sha256_file  # one definition, shared with the runtime
from m2vae_fusion.errors import BundleError

PARITY_TOL = 1e-4
OPSET = 17
PROBE_N = 4
FORMAT = "m2vae_fusion.bundle"
FORMAT_VERSION = 1


class ParityError(BundleError):
    """ONNX and torch (or stored probe) outputs differ by more than the tolerance (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


class ChecksumError(BundleError):
    """A bundle file is missing or its sha256 differs from the manifest (exit status 1)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


# --------------------------------------------------------------------------------------------------------- helpers

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


# ---------------------------------------------------------------------------------------------------------- export

def export_bundle(out_dir: str, betavaes: Mapping, m2vae, head=None, *, sensors: Mapping,
                  class_names: Optional[Sequence[str]] = None, training: Optional[Mapping] = None,
                  probe_data: Optional[Mapping] = None, seed: int = 0) -> str:
    """Write a model bundle (docs/formats.md) to ``out_dir`` and check ONNX/torch parity.

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

    Returns:
        ``out_dir``.

    Raises:
        ParityError: an ONNX file's outputs differ from torch's by more than :data:`PARITY_TOL`.
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
        np.savez(os.path.join(tmp, "probes.npz"), **probes)
        for fname in sorted(os.listdir(tmp)):
            files[fname] = sha256_file(os.path.join(tmp, fname))
        subsets = [list(s) for s in m2vae.subsets]
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_id": compute_model_id(files),
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
            "files": files,
            "probes": "probes.npz",
            "training": dict(training or {}),
        }
        # parity before anything replaces an existing bundle
        check_probe_parity(tmp, manifest, dict(np.load(os.path.join(tmp, "probes.npz"))), tol=PARITY_TOL)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
        _replace_bundle(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


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
                     sensors: Optional[Mapping] = None, modalities: Optional[Sequence[str]] = None) -> str:
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
                         seed=seed)


# ---------------------------------------------------------------------------------------------------------- verify

def read_manifest(bundle_dir: str) -> Dict:
    """Load and sanity-check ``bundle_dir/manifest.json``; raises :class:`BundleError` naming the file."""
    path = os.path.join(bundle_dir, "manifest.json")
    if not os.path.isdir(bundle_dir):
        raise BundleError(f"{bundle_dir}: no such bundle directory")
    if not os.path.isfile(path):
        raise BundleError(f"{path}: missing (not a model bundle)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key in ("model_id", "modalities", "inputs", "feature_dim", "latent_dim", "subsets", "networks", "files",
                "probes"):
        if key not in manifest:
            raise BundleError(f"{path}: key {key!r} missing")
    return manifest


def verify_bundle(bundle_dir: str, tol: Optional[float] = None) -> Dict:
    """Re-check a bundle: every file's sha256, the model id, that every network file is listed, and probe parity
    (onnxruntime on the stored inputs vs the stored torch outputs).

    Returns:
        ``{"model_id": ..., "files": n, "max_abs_diff": {file: d}}``.

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
    for name in listed + [manifest["probes"]]:
        if name not in files:
            raise ChecksumError(f"{os.path.join(bundle_dir, name)}: network file not listed in manifest.json files")
    expect = compute_model_id(files)
    if manifest["model_id"] != expect:
        raise ChecksumError(f"{os.path.join(bundle_dir, 'manifest.json')}: model_id {manifest['model_id']!r} does "
                            f"not match the files ({expect!r})")
    try:
        probes = dict(np.load(os.path.join(bundle_dir, manifest["probes"])))
    except Exception as exc:  # corrupt npz with a matching sum cannot happen unless the manifest was edited too
        raise ChecksumError(f"{os.path.join(bundle_dir, manifest['probes'])}: unreadable ({exc})") from None
    diffs = check_probe_parity(bundle_dir, manifest, probes, tol)
    return {"model_id": manifest["model_id"], "files": len(files), "max_abs_diff": diffs}
