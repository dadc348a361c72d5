"""The ONNX model bundle: manifest, sha256 sums, latent bounds and onnxruntime sessions (format v2/v3 in
docs/formats.md).

A bundle holds, for modalities ``M``: a β-VAE encoder/decoder per modality, the ``2^|M| − 1`` M2VAE subset
encoders ``q_S(z | x_S)``, the ``|M|`` M2VAE decoders ``p_m(x_m | z)``, an optional class-belief head
(Korthals et al., FUSION 2019, Fig. 2c and Sec. V-D) and, since format v2, the merged chain graphs of
:mod:`m2vae_fusion.core.chains` (per subset: decoders side by side; subset encoder → head), which the fusion engine
runs with onnxruntime IOBinding into pre-allocated buffers; since format v3, the ``latent_bounds`` the fusion engine
enforces on every latent it accepts or produces (:class:`LatentBounds`). No torch, no ROS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Iterable, Mapping, Sequence

import numpy as np

from m2vae_fusion.core.modalities import subset_key  # noqa: F401  (re-exported: bundle.subset_key)
from m2vae_fusion.errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "m2vae_fusion.bundle"
#: the manifest version this runtime writes for a bundle with ``latent_bounds`` (docs/formats.md "Model bundle")
FORMAT_VERSION = 3
#: the manifest version written for a bundle without ``latent_bounds`` (still read: outputs checked for finiteness
#: and normalisation only, no range check of latents, no precision cap)
FORMAT_VERSION_NO_BOUNDS = 2
#: the manifest versions this runtime reads
READ_VERSIONS = (2, 3)
#: default margin of the latent bounds, as fractions of the per-dimension range and absolute latent units
#: (docs/formats.md "latent_bounds"): a mean m_d is accepted within
#: [mean_min_d − (f·r_d + a), mean_max_d + (f·r_d + a)], r_d = mean_max_d − mean_min_d
MARGIN_FRACTION = 0.5
MARGIN_ABSOLUTE = 0.5
#: multimodal-VAE objectives whose bundles this runtime can fuse with (the manifest's ``objective``; issue 11). The
#: runtime treats them alike: every subset encoder is one ONNX graph returning a Gaussian (mean, log-variance), for
#: a product or mixture of experts computed inside the graph (a mixture as its moment-matched Gaussian).
OBJECTIVES = ("m2vae", "jmvae", "mvae", "mmvae", "mopoe")
REQUIRED_KEYS = ("format", "format_version", "objective", "model_id", "modalities", "inputs", "feature_dim",
                 "latent_dim", "subsets", "networks", "chains", "files")


def upgrade_command(path: str) -> str:
    """The command that rewrites the bundle at ``path`` in the current format (no retraining)."""
    return f"m2vae-fusion export --from-bundle {path} --out {path}"


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value) -> str:
    """JSON text with sorted keys and no spaces (floats as Python's shortest round-trip repr): hashed by
    :func:`compute_model_id`."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def compute_model_id(files: Mapping[str, str], latent_bounds: Mapping | None = None) -> str:
    """``model_id``: first 16 hex digits of the sha256 over the sorted ``"file:sha256\\n"`` lines of ``files``, plus,
    for a bundle with ``latent_bounds`` (format v3), the line ``"manifest.json#latent_bounds:<sha256 of
    canonical_json(latent_bounds)>\\n"`` (agents that share a model_id enforce the same bounds)."""
    text = "".join(f"{name}:{files[name]}\n" for name in sorted(files))
    if latent_bounds is not None:
        digest = hashlib.sha256(canonical_json(latent_bounds).encode()).hexdigest()
        text += f"manifest.json#latent_bounds:{digest}\n"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_model_id(manifest: Mapping) -> str:
    """The ``model_id`` a manifest's ``files`` (and, in format v3, ``latent_bounds``) give."""
    bounds = manifest.get("latent_bounds") if manifest.get("format_version") == 3 else None
    return compute_model_id(manifest["files"], bounds)


class LatentBounds:
    """Per-dimension ranges of the latent space seen in training (manifest ``latent_bounds``, format v3).

    A latent mean is *in range* when every dimension d lies in ``[lower_d, upper_d]`` with
    ``lower_d = mean_min_d − pad_d``, ``upper_d = mean_max_d + pad_d`` and ``pad_d = margin_fraction · (mean_max_d −
    mean_min_d) + margin_absolute``. Log-variances are clipped to ``[log_variance_min_d, log_variance_max_d]``: the
    precision ``1 / exp(log_variance)`` of any latent (a peer's contribution or a belief) is capped at the highest
    precision a subset encoder gave on the training set, so no single message can claim more certainty than
    training ever produced.

    Args:
        block: the manifest's ``latent_bounds`` mapping (``mean_min``, ``mean_max``, ``log_variance_min``,
            ``log_variance_max``: lists of Dz floats; ``margin_fraction``, ``margin_absolute``: floats ≥ 0).
        latent_dim: Dz.
        where: the file named in errors.

    Raises:
        BundleError: missing keys, wrong lengths, non-finite values, min > max, or a negative margin.
    """

    KEYS = ("mean_min", "mean_max", "log_variance_min", "log_variance_max")

    def __init__(self, block: Mapping, latent_dim: int, where: str = MANIFEST):
        if not isinstance(block, Mapping):
            raise BundleError(f"{where}: latent_bounds must be an object")
        arrays = {}
        for key in self.KEYS:
            try:
                a = np.asarray(block[key], dtype=np.float64).reshape(-1)
            except (KeyError, TypeError, ValueError):
                raise BundleError(f"{where}: latent_bounds.{key} missing or not a list of numbers") from None
            if a.shape[0] != latent_dim or not np.isfinite(a).all():
                raise BundleError(f"{where}: latent_bounds.{key} must hold {latent_dim} finite numbers")
            arrays[key] = a
        try:
            self.margin_fraction = float(block.get("margin_fraction", MARGIN_FRACTION))
            self.margin_absolute = float(block.get("margin_absolute", MARGIN_ABSOLUTE))
        except (TypeError, ValueError):
            raise BundleError(f"{where}: latent_bounds margins must be numbers") from None
        if not (np.isfinite(self.margin_fraction) and np.isfinite(self.margin_absolute)
                and self.margin_fraction >= 0 and self.margin_absolute >= 0):
            raise BundleError(f"{where}: latent_bounds margins must be finite and ≥ 0")
        if (arrays["mean_min"] > arrays["mean_max"]).any() or \
                (arrays["log_variance_min"] > arrays["log_variance_max"]).any():
            raise BundleError(f"{where}: latent_bounds has a minimum above its maximum")
        self.mean_min = arrays["mean_min"]
        self.mean_max = arrays["mean_max"]
        self.log_variance_min = arrays["log_variance_min"].astype(np.float32)
        self.log_variance_max = arrays["log_variance_max"].astype(np.float32)
        pad = self.margin_fraction * (self.mean_max - self.mean_min) + self.margin_absolute
        #: float64 (Dz,) accepted range of latent means
        self.lower = self.mean_min - pad
        self.upper = self.mean_max + pad

    @property
    def precision_max(self) -> np.ndarray:
        """float64 (Dz,) the highest precision ``1 / exp(log_variance_min)`` a latent may hold."""
        return np.exp(-self.log_variance_min.astype(np.float64))

    def in_range(self, mean: np.ndarray) -> np.ndarray:
        """bool (N,) (or a scalar bool for one (Dz,) mean): every dimension within ``[lower, upper]`` (NaN: False)."""
        m = np.asarray(mean, dtype=np.float64)
        ok = (m >= self.lower) & (m <= self.upper)
        return ok.all(axis=-1)

    def worst_dimension(self, mean: np.ndarray) -> tuple[int, float]:
        """(dimension, value) of the one (Dz,) mean's dimension farthest outside its range (in range widths)."""
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
        width = np.maximum(self.upper - self.lower, 1e-12)
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.maximum(self.lower - m, m - self.upper) / width
        d = int(np.nanargmax(np.where(np.isnan(out), np.inf, out)))
        return d, float(m[d])

    def cap_log_variance(self, log_variance: np.ndarray) -> np.ndarray:
        """Log-variance clipped to ``[log_variance_min, log_variance_max]`` per dimension (a new float32 array):
        precision capped at the training maximum, uncertainty at the training minimum precision."""
        return np.clip(np.asarray(log_variance, np.float32), self.log_variance_min, self.log_variance_max)

    def to_manifest(self) -> dict:
        """The manifest block (lists of Python floats)."""
        return {"mean_min": [float(v) for v in self.mean_min], "mean_max": [float(v) for v in self.mean_max],
                "log_variance_min": [float(v) for v in self.log_variance_min],
                "log_variance_max": [float(v) for v in self.log_variance_max],
                "margin_fraction": self.margin_fraction, "margin_absolute": self.margin_absolute}


def read_manifest(path: str) -> dict:
    """Read and schema-check ``<path>/manifest.json`` (format v2 or v3).

    Raises:
        BundleError: missing directory or manifest, invalid JSON, wrong format, a ``format_version`` not in
            :data:`READ_VERSIONS` (a v1 bundle: the message gives the upgrade command), an objective this runtime
            cannot fuse with, missing keys, or (v3) a missing or malformed ``latent_bounds`` (the message names the
            file).
    """
    manifest = read_manifest_any(path)
    mpath = os.path.join(path, MANIFEST)
    version = manifest.get("format_version")
    readable = " and ".join(str(v) for v in READ_VERSIONS)
    if version == 1:
        raise BundleError(f"{mpath}: format_version 1 bundle (no chain graphs); this runtime reads format_version "
                          f"{readable}. Upgrade it without retraining: {upgrade_command(path)}")
    if type(version) is not int or version not in READ_VERSIONS:
        raise BundleError(f"{mpath}: unknown format_version {version!r}; this runtime reads format_version "
                          f"{readable} (a newer m2vae_fusion wrote it?)")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if version == 3 and "latent_bounds" not in manifest:
        missing.append("latent_bounds")
    if missing:
        raise BundleError(f"{mpath}: missing keys {missing}")
    if version == 3:
        LatentBounds(manifest["latent_bounds"], int(manifest["latent_dim"]), mpath)
    if manifest["objective"] not in OBJECTIVES:
        raise BundleError(f"{mpath}: objective {manifest['objective']!r} is not supported by this runtime "
                          f"(supported: {list(OBJECTIVES)})")
    chains = manifest["chains"]
    if not isinstance(chains, dict) or not all(isinstance(chains.get(k), dict) for k in ("decode", "encode")):
        raise BundleError(f"{mpath}: \"chains\" must hold \"decode\" and \"encode\" maps")
    return manifest


def read_manifest_any(path: str) -> dict:
    """Read ``<path>/manifest.json`` of any format version (for upgrading); checks only the ``format`` key.

    Raises:
        BundleError: missing directory or manifest, invalid JSON or wrong format (the message names the file).
    """
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise BundleError(f"model bundle directory {path} does not exist")
    if not os.path.isfile(mpath):
        raise BundleError(f"{mpath} is missing: not a model bundle (expected manifest.json and *.onnx)")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: expected \"format\": \"{FORMAT}\"")
    return manifest


def verify_sums(path: str, manifest: Mapping) -> None:
    """Check every file listed in ``manifest["files"]`` against its sha256, and the ``model_id`` against the sums.

    Raises:
        BundleError: a missing file or a mismatching sum (the message names the file), or a wrong ``model_id``.
    """
    _check_sums(path, manifest["files"], MANIFEST)
    mid = manifest_model_id(manifest)
    if mid != manifest["model_id"]:
        raise BundleError(f"{os.path.join(path, MANIFEST)}: model_id {manifest['model_id']} does not match the "
                          f"file sums and latent bounds ({mid})")
    _check_sums(path, unimodal_head_files(manifest, path), f"{MANIFEST} under unimodal_heads")


def _check_sums(path: str, sums: Mapping[str, str], where: str) -> None:
    """Every ``{file: sha256}`` of ``sums`` exists in ``path`` with that sum (BundleError naming the file)."""
    for name, expected in sorted(sums.items()):
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            raise BundleError(f"{fpath} is missing (listed in {where})")
        got = sha256_file(fpath)
        if got != expected:
            raise BundleError(f"{fpath}: sha256 {got[:12]}… does not match the manifest's {expected[:12]}… "
                              "(file corrupt or changed after export)")


def unimodal_head_files(manifest: Mapping, path: str = "") -> dict:
    """``{file: sha256}`` of the optional ``unimodal_heads`` block (docs/formats.md; empty without it).

    Raises:
        BundleError: a malformed block (names the manifest)."""
    block = manifest.get("unimodal_heads")
    if block is None:
        return {}
    mpath = os.path.join(path, MANIFEST)
    mods = block.get("modalities") if isinstance(block, Mapping) else None
    if not isinstance(mods, Mapping):
        raise BundleError(f"{mpath}: unimodal_heads must be an object with \"modalities\"")
    out = {}
    for m, entry in mods.items():
        if m not in manifest.get("modalities", ()) or not isinstance(entry, Mapping) or \
                not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str) or \
                os.path.basename(entry["file"]) != entry["file"]:
            raise BundleError(f"{mpath}: unimodal_heads.modalities.{m} must name a bundle modality with a \"file\" "
                              "(in the bundle directory) and its \"sha256\"")
        out[entry["file"]] = entry["sha256"]
    return out


def attribute_marginals(probabilities: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Class probabilities float (N, C) → the marginals float64 (N, k) of one attribute, ``p(a | x) = Σ_{c: codes_c
    = a} p(c | x)``, with ``codes`` int (C,) the attribute value of each class (0 … k − 1)."""
    return np.atleast_2d(np.asarray(probabilities, np.float64)) @ np.eye(k)[np.asarray(codes)]


def unimodal_factors(manifest: Mapping, n_classes: int, path: str = "") -> dict:
    """The attributes each unimodal head reads (manifest ``unimodal_heads.class_attributes`` and
    ``unimodal_heads.modalities.<m>.attributes``, docs/formats.md): ``{modality: [(codes int64 (C,), K), …]}`` with
    one entry per attribute marked ``used``, for the modalities whose entry has ``attributes``; ``{}`` without
    ``class_attributes`` (the heads' posteriors are used whole).

    Raises:
        BundleError: a malformed mapping (names the manifest)."""
    block = manifest.get("unimodal_heads") or {}
    mapping = block.get("class_attributes")
    if mapping is None:
        return {}
    mpath = os.path.join(path, MANIFEST)
    ok = isinstance(mapping, Mapping) and all(
        isinstance(v, list) and len(v) == n_classes and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                             for c in v) for v in mapping.values())
    if not ok:
        raise BundleError(f"{mpath}: unimodal_heads.class_attributes must map each attribute to {n_classes} "
                          "non-negative integer codes, one per class_names entry")
    out = {}
    for m, entry in (block.get("modalities") or {}).items():
        rel = entry.get("attributes")
        if rel is None:
            continue
        if not isinstance(rel, Mapping) or not set(rel) <= set(mapping) or \
                not all(isinstance(r, Mapping) and isinstance(r.get("used"), bool) for r in rel.values()):
            raise BundleError(f"{mpath}: unimodal_heads.modalities.{m}.attributes must map attributes of "
                              "class_attributes to objects with a boolean \"used\"")
        out[m] = [(np.asarray(mapping[a], np.int64), int(max(mapping[a])) + 1) for a, r in rel.items() if r["used"]]
    return out


class _BoundRun:
    """One session run through onnxruntime IOBinding with pre-allocated, reused input and output buffers for a
    fixed batch size (the single-belief path: no allocation per run). Not re-entrant: guarded by a lock."""

    def __init__(self, sess, n: int, input_dims: Mapping[str, int], output_dims: Mapping[str, int]):
        self._sess = sess
        self._lock = threading.Lock()
        self._binding = sess.io_binding()
        self.inputs = {k: np.zeros((n, d), np.float32) for k, d in input_dims.items()}
        self.outputs = {k: np.zeros((n, d), np.float32) for k, d in output_dims.items()}
        for name, buf in self.inputs.items():
            self._binding.bind_input(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        for name, buf in self.outputs.items():
            self._binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict:
        with self._lock:
            for name, buf in self.inputs.items():
                buf[...] = feeds[name]
            self._sess.run_with_iobinding(self._binding)
            return {k: v.copy() for k, v in self.outputs.items()}


class Bundle:
    """A loaded model bundle: one onnxruntime session per network and per chain graph (format v2).

    Attributes:
        path: bundle directory.
        manifest: the parsed ``manifest.json``.
        model_id: str, identifies the latent space; agents refuse latents of another ``model_id``.
        format_version: int, the manifest's format version (2: no bounds; 3: with ``latent_bounds``).
        latent_bounds: :class:`LatentBounds` of a format-v3 bundle, None for format v2 (no range checks).
        objective: str, the multimodal-VAE objective the networks were trained with (``"m2vae"``).
        modalities: tuple of modality names, in the canonical order.
        feature_dim: D*, β-VAE latent size (M2VAE input per modality).
        latent_dim: Dz, size of the shared M2VAE latent space.
        subsets: tuple of subset keys (``"camera"``, ``"camera+lidar"``, …), in manifest order.
        class_names: tuple of class names, or None for a bundle without a class-belief head.
        providers: onnxruntime execution providers in use.
    """

    #: batch sizes that get pre-allocated IOBinding buffers (1: one belief; 2: a peer merge decodes two latents)
    BOUND_BATCHES = (1, 2)

    def __init__(self, path: str, manifest: dict, threads: int = 1, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.path = path
        self.manifest = manifest
        self.model_id = str(manifest["model_id"])
        self.format_version = int(manifest["format_version"])
        self.latent_bounds = (LatentBounds(manifest["latent_bounds"], int(manifest["latent_dim"]),
                                           os.path.join(path, MANIFEST))
                              if self.format_version == 3 else None)
        self.objective = str(manifest["objective"])
        from m2vae_fusion.core.novelty import Novelty, NoveltyError

        try:
            #: :class:`~m2vae_fusion.core.novelty.Novelty` of the manifest's optional ``novelty`` block (absent:
            #: uncalibrated, nothing is ever novel)
            self.novelty = Novelty(manifest.get("novelty"), os.path.join(path, MANIFEST))
        except NoveltyError as exc:
            raise BundleError(str(exc)) from None
        self.modalities = tuple(manifest["modalities"])
        self.feature_dim = int(manifest["feature_dim"])
        self.latent_dim = int(manifest["latent_dim"])
        self.subsets = tuple(subset_key(s, self.modalities) for s in manifest["subsets"])
        names = manifest.get("class_names")
        self.class_names = tuple(names) if names else None
        available = ort.get_available_providers()
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        self.providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        self._opts = ort.SessionOptions()
        self._opts.intra_op_num_threads = max(1, int(threads))
        self._opts.inter_op_num_threads = 1
        self._opts.log_severity_level = 3
        self._sessions: dict = {}
        self._bound: dict = {}
        self._chain_meta: dict = {}
        nets = manifest["networks"]
        self._files = {
            **{("betavae_encoder", m): nets["betavae_encoder"][m] for m in self.modalities},
            **{("betavae_decoder", m): nets["betavae_decoder"][m] for m in self.modalities
               if m in nets.get("betavae_decoder", {})},
            **{("subset_encoder", s): nets["subset_encoder"][s] for s in self.subsets},
            **{("decoder", m): nets["decoder"][m] for m in self.modalities},
        }
        if nets.get("head") and self.class_names:
            self._files[("head", "")] = nets["head"]
        self._unimodal_factors: dict = {}
        if self.class_names:
            unimodal_head_files(manifest, path)  # a malformed block stops here
            for m, entry in (manifest.get("unimodal_heads") or {}).get("modalities", {}).items():
                self._files[("unimodal_head", m)] = entry["file"]
            self._unimodal_factors = unimodal_factors(manifest, len(self.class_names), path)
        chains = manifest["chains"]
        for kind in ("decode", "encode"):
            for s in self.subsets:
                self._files[(f"chain_{kind}", s)] = chains[kind][s]
        # open every network the fusion path needs now, so a corrupt file stops start-up, not the first message
        for key in self._files:
            if key[0] != "betavae_decoder" or (self.novelty.needs_reconstruction and self.novelty.has(key[1])):
                self._session(key)  # novelty with reconstruction_error runs the β-VAE decoder
        missing = [m for m in self.modalities if self.novelty.needs_reconstruction and self.novelty.has(m)
                   and ("betavae_decoder", m) not in self._files]
        if missing:
            raise BundleError(f"{os.path.join(path, MANIFEST)}: novelty calibrated for {missing} without their "
                              "β-VAE decoders")
        self._check_chain_outputs()

    def _check_chain_outputs(self) -> None:
        """The encode chains give ``probabilities`` exactly when the bundle has a head (else the manifest lies)."""
        for s in self.subsets:
            names = {o.name for o in self._session(("chain_encode", s)).get_outputs()}
            if ("probabilities" in names) != self.has_head or not {"mean", "log_variance"} <= names:
                raise BundleError(f"{os.path.join(self.path, self._files[('chain_encode', s)])}: outputs "
                                  f"{sorted(names)} do not match the manifest (head: {self.has_head})")

    @classmethod
    def load(cls, path: str, *, check_sums: bool = True, threads: int = 1,
             providers: Sequence[str] | None = None) -> "Bundle":
        """Load a bundle directory.

        Args:
            path: directory with ``manifest.json``.
            check_sums: verify every file's sha256 and the ``model_id`` (recommended; ~10 ms for a small bundle).
            threads: onnxruntime intra-op threads per session.
            providers: onnxruntime execution providers to prefer (unavailable ones are skipped; CPU is the fallback).

        Raises:
            BundleError: missing, corrupt or inconsistent bundle; the message names the file.
        """
        path = os.path.abspath(path)
        manifest = read_manifest(path)
        if check_sums:
            verify_sums(path, manifest)
        try:
            return cls(path, manifest, threads=threads, providers=providers)
        except KeyError as exc:
            raise BundleError(f"{os.path.join(path, MANIFEST)}: networks entry missing for {exc}") from None

    # -- sessions ---------------------------------------------------------------------------------------------
    def _session(self, key):
        sess = self._sessions.get(key)
        if sess is None:
            import onnxruntime as ort

            fpath = os.path.join(self.path, self._files[key])
            try:
                sess = ort.InferenceSession(fpath, sess_options=self._opts, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own exception types for corrupt models
                raise BundleError(f"{fpath}: cannot be loaded by onnxruntime ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]})") from None
            self._sessions[key] = sess
        return sess

    def _run(self, key, feeds: Mapping[str, np.ndarray]):
        return self._session(key).run(None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})

    def input_config(self, modality: str) -> dict:
        """Preprocessing config of ``modality`` (see :mod:`m2vae_fusion.core.preprocess`)."""
        return dict(self.manifest["inputs"][modality]["preprocessing"])

    def input_shape(self, modality: str) -> tuple:
        """Shape of one preprocessed input of ``modality`` (no batch axis)."""
        return tuple(self.manifest["inputs"][modality]["shape"])

    # -- networks ---------------------------------------------------------------------------------------------
    def encode_feature(self, modality: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """β-VAE encoder of ``modality``: preprocessed input float32 (N, *input_shape) → mean, log-variance (N, D*)."""
        mean, logvar = self._run(("betavae_encoder", modality), {"x": x})
        return mean, logvar

    def decode_feature(self, modality: str, f: np.ndarray) -> np.ndarray:
        """β-VAE decoder of ``modality``: feature float32 (N, D*) → reconstructed input (N, *input_shape)."""
        return self._run(("betavae_decoder", modality), {"z": f})[0]

    def encode_subset(self, features: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """M2VAE subset encoder q_S(z | x_S) for S = the keys of ``features`` (FUSION 2019, Fig. 2c).

        Args:
            features: modality → β-VAE feature float32 (N, D*); the keys choose the subset encoder.

        Returns:
            latent mean and log-variance, float32 (N, Dz).
        """
        key = subset_key(features, self.modalities)
        mean, logvar = self._run(("subset_encoder", key), features)
        return mean, logvar

    def decode(self, modality: str, z: np.ndarray) -> np.ndarray:
        """M2VAE decoder p_m(x_m | z) mean: latent float32 (N, Dz) → β-VAE feature of ``modality`` (N, D*)."""
        return self._run(("decoder", modality), {"z": z})[0]

    @property
    def has_head(self) -> bool:
        """True when the bundle has a class-belief head (trained with labels)."""
        return ("head", "") in self._files

    def unimodal_attributes(self, modality: str) -> list | None:
        """The attributes the unimodal head of ``modality`` reads (:func:`unimodal_factors`): a list of (codes
        int64 (C,), number of values K), possibly empty; None when the bundle records none (use the whole
        posterior)."""
        return self._unimodal_factors.get(modality)

    def has_unimodal_head(self, modality: str) -> bool:
        """True when the bundle has a unimodal class head for ``modality`` (manifest ``unimodal_heads``)."""
        return ("unimodal_head", modality) in self._files

    def classify_unimodal(self, modality: str, feature: np.ndarray) -> np.ndarray | None:
        """Unimodal class head of ``modality`` (:mod:`m2vae_fusion.training.unimodal`): β-VAE feature float32
        (N, D*) → class probabilities p(c | x_m) float32 (N, C); None when the bundle has none for it."""
        if not self.has_unimodal_head(modality):
            return None
        return self._run(("unimodal_head", modality), {"feature": feature})[0]

    def classify(self, z: np.ndarray) -> np.ndarray | None:
        """Class-belief head: latent mean float32 (N, Dz) → class probabilities (N, C); None without a head."""
        if not self.has_head:
            return None
        return self._run(("head", ""), {"z": z})[0]

    # -- chains (format v2) ------------------------------------------------------------------------------------
    def decode_slots(self, z: np.ndarray, modalities: Iterable[str], *, bind: bool = True) -> dict:
        """Decode chain of the subset K = ``modalities``: the M2VAE decoder means ``p_m(x_m | z)`` of every m ∈ K in
        one session run (FUSION 2019, Eq. 18, ``f(M')``).

        Args:
            z: latent means float32 (N, Dz).
            modalities: the slots to decode (non-empty).
            bind: run through IOBinding with pre-allocated buffers when N is in :data:`BOUND_BATCHES`.

        Returns:
            modality → decoded β-VAE feature float32 (N, D*) (fresh arrays, owned by the caller).

        Raises:
            KeyError: an unknown modality. ValueError: wrong input shape.
        """
        key = subset_key(modalities, self.modalities)
        return self._run_chain(("chain_decode", key), {"z": z}, bind)

    def encode_slots(self, features: Mapping[str, np.ndarray], *, bind: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Encode chain of S = the keys of ``features``: subset encoder ``q_S`` → class-belief head, one run.

        Args:
            features: slot → β-VAE feature float32 (N, D*) (observed, or decoded from a belief).
            bind: run through IOBinding with pre-allocated buffers when N is in :data:`BOUND_BATCHES`.

        Returns:
            latent mean, log-variance float32 (N, Dz) and class probabilities float32 (N, C) of the head on the
            mean (None without a head). Values are not checked here (the fusion engine checks them).

        Raises:
            KeyError: an unknown modality. ValueError: wrong input shape.
        """
        key = subset_key(features, self.modalities)
        out = self._run_chain(("chain_encode", key), features, bind)
        return out["mean"], out["log_variance"], out.get("probabilities")

    def _run_chain(self, key, feeds: Mapping[str, np.ndarray], bind: bool) -> dict:
        meta = self._chain_meta.get(key)
        if meta is None:
            sess = self._session(key)
            meta = self._chain_meta[key] = ([(i.name, int(i.shape[1])) for i in sess.get_inputs()],
                                            [(o.name, int(o.shape[1])) for o in sess.get_outputs()])
        in_meta, out_meta = meta
        arrays = {}
        n = None
        for name, dim in in_meta:
            a = feeds[name]
            if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                a = np.asarray(a, dtype=np.float32)
            if a.ndim != 2 or a.shape[1] != dim or (n is not None and a.shape[0] != n):
                raise ValueError(f"{self._files[key]}: input {name!r} has shape {a.shape}, expected "
                                 f"({n if n is not None else 'N'}, {dim})")
            n = a.shape[0]
            arrays[name] = a
        if bind and n in self.BOUND_BATCHES:
            run = self._bound.get((key, n))
            if run is None:
                run = self._bound[(key, n)] = _BoundRun(self._session(key), n, dict(in_meta), dict(out_meta))
            return run(arrays)
        names = [name for name, _ in out_meta]
        out = self._session(key).run(names, {k: np.ascontiguousarray(v) for k, v in arrays.items()})
        return dict(zip(names, out))

    # -- synthetic inputs (benchmarks, tests) -------------------------------------------------------------------
    def sample_latents(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Synthetic latent means float32 (n, Dz) the fusion engine accepts: uniform within the training range
        ``[mean_min, mean_max]`` of a format-v3 bundle, N(0, I) (the prior) for a format-v2 bundle."""
        b = self.latent_bounds
        if b is None:
            return rng.normal(0.0, 1.0, (n, self.latent_dim)).astype(np.float32)
        return rng.uniform(b.mean_min, b.mean_max, (n, self.latent_dim)).astype(np.float32)

    def sample_features(self, modality: str, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Synthetic β-VAE features float32 (n, D*) of ``modality``: the M2VAE decoder means of
        :meth:`sample_latents` (features like those of real observations, whose encodings stay in range)."""
        return self.decode(modality, self.sample_latents(rng, n))

    # -- probes -----------------------------------------------------------------------------------------------
    def probe_differences(self) -> dict[str, float]:
        """Max abs difference between onnxruntime outputs and the stored torch outputs, per network file.

        ``probes.npz`` holds ``"<file>:<input name>"`` inputs and ``"<file>:<output name>"`` expected outputs.

        Raises:
            BundleError: probes file missing or without entries for a network.
        """
        import onnxruntime as ort

        ppath = os.path.join(self.path, self.manifest.get("probes", "probes.npz"))
        if not os.path.isfile(ppath):
            raise BundleError(f"{ppath} is missing (probe inputs and expected outputs)")
        probes = np.load(ppath)
        out = {}
        for fname in sorted(set(self._files.values())):
            sess = ort.InferenceSession(os.path.join(self.path, fname), sess_options=self._opts,
                                        providers=self.providers)
            feeds = {i.name: probes[f"{fname}:{i.name}"] for i in sess.get_inputs() if f"{fname}:{i.name}" in probes}
            if len(feeds) != len(sess.get_inputs()):
                raise BundleError(f"{ppath}: no probe inputs for {fname}")
            got = sess.run(None, feeds)
            diff = 0.0
            for o, value in zip(sess.get_outputs(), got):
                diff = max(diff, float(np.max(np.abs(value - probes[f"{fname}:{o.name}"]))))
            out[fname] = diff
        return out
