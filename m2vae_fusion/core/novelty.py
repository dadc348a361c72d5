"""Novelty: an out-of-distribution score of one observation from its own β-VAE (no ROS, no torch).

For an observation ``x`` of modality ``m`` the β-VAE gives the two terms of its ELBO (Kingma & Welling, Eq. 10 as
used by the β-VAE per modality, FUSION 2019 Sec. V-D): the reconstruction error ``e(x) = mean_i (x̂_i − x_i)²``
with ``x̂`` the β-VAE decoder mean of the encoder mean (the Gaussian log-likelihood up to constants), and the
``KL(q(f | x) ‖ N(0, I)) = ½ Σ_d (σ_d² + μ_d² − 1 − log σ_d²)`` of the encoder posterior; and, because a β-VAE with
collapsed dimensions reconstructs every input alike (the shipped LiDAR β-VAE does), the squared Mahalanobis distance
``(μ − m)ᵀ Σ⁻¹ (μ − m)`` of the encoder mean under a Gaussian fit ``N(m, Σ)`` of the calibration data's encoder means
(the aggregate posterior's density), and ``−2 log`` of a Gaussian-mixture density of the encoder means
(``feature_mixture``: the aggregate posterior of a 27-class world is multi-modal, so a single Gaussian covers the gaps
between its modes where a wall or an empty floor lands; the mixture is fitted on the training split, the interval on
held-out data). Likelihoods rate simple
inputs (a flat wall, an empty floor, an all-max-range scan) as *more* likely than the training data, so a one-sided
test on the ELBO misses them; instead each statistic is tested two-sided (a typicality test): its logarithm
``u = log(s + eps)`` must lie within the central interval ``[low, high]`` of the in-distribution calibration data.

The score of one statistic is the distance from the calibration median in units of that half-interval:
``(u − median) / (high − median)`` above the median, ``(median − u) / (median − low)`` below it; the observation's
novelty score is the largest over the statistics the bundle calibrated (manifest ``novelty.statistics``; by default
the KL and the mixture statistic, :data:`DEFAULT_STATISTICS`). A score ≤ 1 lies within the calibrated central
interval of every statistic; the default threshold (:data:`DEFAULT_THRESHOLD`) flags an observation beyond it. The interval is the
quantiles ``tail`` and ``1 − tail`` of the calibration split (manifest ``novelty`` block, docs/formats.md), computed by
:func:`calibrate` on in-distribution data only.

A bundle without a ``novelty`` block (or without an entry for a modality) gives no score: nothing is ever novel.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

#: statistics of one observation this runtime knows, in this order (manifest keys)
STATISTICS = ("reconstruction_error", "kl", "feature_distance", "feature_mixture")
#: the statistics ``export`` calibrates by default. On the shipped hard-world bundle (``bench belief``, simulated
#: scenes without objects): the mixture flags every LiDAR scan of a wall or an empty room that the single Gaussian
#: ``feature_distance`` flags, and more, while each extra statistic adds false alarms on in-distribution data (3
#: statistics: 2.7 % of held-out LiDAR scans flagged, 2: 1.7 %); the reconstruction error flagged nothing the others
#: missed (the LiDAR β-VAE reconstructs every scan alike) and costs a β-VAE decoder run per observation.
#: ``export --novelty-statistics`` chooses others.
DEFAULT_STATISTICS = ("kl", "feature_mixture")
#: ``u = log(s + EPS)``: keeps a perfect reconstruction (e = 0) finite
EPS = 1e-12
#: default tail probability of each side of each statistic's calibration interval (2 statistics × 2 sides: ≤ 1 % of
#: the calibration data flagged). On the shipped hard-world bundle (``bench belief --seed 0|1|2``, 600 held-out
#: observations each): in distribution 0.8-1.7 % (camera), 0.5-1.2 % (LiDAR), 0.8-1.5 % (reflectance) not fused,
#: within the 2 % budget of issue 14, while empty floors and rooms are flagged 2-3x as often as with 0.0015 (its
#: in-distribution share was 0.2-1.2 %; README "Novelty on the simulated world without objects")
DEFAULT_TAIL = 0.0025
#: default novelty threshold: beyond the calibrated central interval of any statistic
DEFAULT_THRESHOLD = 1.0
#: version of the manifest's ``novelty`` block this runtime writes (2: ``feature_mixture`` and its ``mixture`` entry)
BLOCK_VERSION = 2
#: versions this runtime reads (a version-1 block has no ``feature_mixture``)
READ_VERSIONS = (1, 2)


class NoveltyError(ValueError):
    """A malformed manifest ``novelty`` block (the message names the file)."""


def statistics(x: np.ndarray, mean: np.ndarray, log_variance: np.ndarray, reconstruction: np.ndarray | None,
               feature_mean=None, feature_precision=None, mixture=None) -> dict:
    """The statistics of a batch of observations (see the module docstring).

    Args:
        x: preprocessed inputs float32 (N, *input_shape).
        mean, log_variance: β-VAE encoder posterior float32 (N, D*).
        reconstruction: β-VAE decoder mean of ``mean``, float32 (N, *input_shape), or None (no
            ``reconstruction_error``).
        feature_mean, feature_precision: (D*,), (D*, D*) Gaussian fit of in-distribution encoder means (None: no
            ``feature_distance``).
        mixture: a :class:`Mixture` of in-distribution encoder means (None: no ``feature_mixture``).

    Returns:
        ``{"reconstruction_error": float64 (N,), "kl": float64 (N,)[, "feature_distance": float64 (N,)]
        [, "feature_mixture": float64 (N,)]}`` (mean squared error per input value; KL in nats; squared Mahalanobis
        distance; :meth:`Mixture.statistic`).
    """
    n = len(x)
    mu = np.asarray(mean, np.float64)
    lv = np.asarray(log_variance, np.float64)
    out = {"kl": 0.5 * (np.exp(lv) + mu ** 2 - 1.0 - lv).sum(axis=1)}
    if reconstruction is not None:
        diff = np.asarray(reconstruction, np.float64).reshape(n, -1) - np.asarray(x, np.float64).reshape(n, -1)
        out["reconstruction_error"] = (diff ** 2).mean(axis=1)
    if feature_mean is not None and feature_precision is not None:
        c = mu - np.asarray(feature_mean, np.float64)
        out["feature_distance"] = np.einsum("nd,de,ne->n", c, np.asarray(feature_precision, np.float64), c)
    if mixture is not None:
        out["feature_mixture"] = mixture.statistic(mu)
    return out


class Mixture:
    """A Gaussian mixture ``p(f) = Σ_k w_k N(f; m_k, P_k⁻¹)`` of encoder means (Bishop 2006, Eq. 9.7), as stored in
    the manifest (``novelty.modalities.<m>.mixture``: ``weights`` (K,), ``means`` (K, D*), ``precisions``
    (K, D*, D*)).

    :meth:`statistic` is ``−2 log Σ_k w_k c_k exp(−½ (f − m_k)ᵀ P_k (f − m_k))`` with ``c_k = sqrt(det P_k /
    max_j det P_j)`` ≤ 1: ``−2 log p(f)`` up to a constant, shifted so that it is ≥ 0 (the ``log(s + eps)`` transform
    of the calibration needs a non-negative statistic); for one component it is the squared Mahalanobis distance.

    Raises:
        ValueError: shapes that do not match, non-finite values, weights not positive or not summing to 1, or a
            precision that is not positive definite.
    """

    def __init__(self, weights, means, precisions):
        w = np.asarray(weights, np.float64).reshape(-1)
        mu = np.asarray(means, np.float64)
        prec = np.asarray(precisions, np.float64)
        k = w.size
        if k < 1 or mu.ndim != 2 or mu.shape[0] != k or prec.shape != (k, mu.shape[1], mu.shape[1]):
            raise ValueError(f"mixture: weights (K,), means (K, D), precisions (K, D, D) expected, got "
                             f"{w.shape}, {mu.shape}, {prec.shape}")
        if not (np.isfinite(w).all() and np.isfinite(mu).all() and np.isfinite(prec).all()):
            raise ValueError("mixture: non-finite values")
        if (w <= 0).any() or abs(w.sum() - 1.0) > 1e-3:
            raise ValueError("mixture: weights must be > 0 and sum to 1")
        if not (np.allclose(prec, np.swapaxes(prec, 1, 2)) and (np.linalg.eigvalsh(prec).min(axis=1) > 0).all()):
            raise ValueError("mixture: precisions must be symmetric positive definite")
        logdet = np.linalg.slogdet(prec)[1]
        self.weights = w
        self.means = mu
        self.precisions = prec
        #: log w_k + log c_k
        self.log_scale = np.log(w) + 0.5 * (logdet - logdet.max())
        # P_k = L_k L_kᵀ (Cholesky): (f − m_k)ᵀ P_k (f − m_k) = ‖L_kᵀ f − L_kᵀ m_k‖², all K by one matmul
        chol = np.linalg.cholesky(prec)                                       # (K, D, D)
        d = mu.shape[1]
        self._factors = np.ascontiguousarray(np.transpose(chol, (1, 0, 2)).reshape(d, k * d))    # (D, K·D)
        self._offsets = np.einsum("kd,kde->ke", mu, chol).reshape(-1)                           # (K·D,)

    def statistic(self, features) -> np.ndarray:
        """The mixture statistic float64 (N,) (≥ 0) of encoder means float (N, D*)."""
        f = np.asarray(features, np.float64)
        y = f @ self._factors - self._offsets                                  # (N, K·D): L_kᵀ (f − m_k)
        d2 = np.square(y).reshape(len(f), self.log_scale.size, -1).sum(axis=2)  # (N, K)
        a = self.log_scale - 0.5 * d2
        top = a.max(axis=1)
        return np.maximum(-2.0 * (top + np.log(np.exp(a - top[:, None]).sum(axis=1))), 0.0)

    def to_json(self) -> dict:
        """The manifest entry (``weights``, ``means``, ``precisions`` as nested lists of floats)."""
        return {"weights": [float(v) for v in self.weights], "means": self.means.tolist(),
                "precisions": self.precisions.tolist()}


def fit_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian fit of encoder means float (N, D*): mean (D*,) and precision (D*, D*) (covariance + 1e-6·I inverted)."""
    f = np.asarray(features, np.float64)
    cov = np.cov(f.T).reshape(f.shape[1], f.shape[1]) + 1e-6 * np.eye(f.shape[1])
    return f.mean(axis=0), np.linalg.inv(cov)


def _log(s) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.log(np.maximum(np.asarray(s, np.float64), 0.0) + EPS)


def _score_one(s: float, med: float, up_scale: float, down_scale: float) -> float:
    """One statistic's score of one observation (see :meth:`Novelty.score`): inf for NaN."""
    if s != s:
        return math.inf
    u = math.log(max(s, 0.0) + EPS) if s < math.inf else math.inf
    return max((u - med) * up_scale, (med - u) * down_scale, 0.0)


def calibrate(stats: Mapping[str, np.ndarray], tail: float = DEFAULT_TAIL,
              names: tuple = DEFAULT_STATISTICS) -> dict:
    """One modality's calibration entry from the statistics of in-distribution observations.

    Args:
        stats: :func:`statistics` of the calibration observations (at least 20), with ``feature_distance``.
        tail: probability of each side outside the interval (0 < tail < 0.5).
        names: the statistics to calibrate (a subset of :data:`STATISTICS`).

    Returns:
        ``{"samples": N, "<statistic>": {"low", "median", "high"} (log units)}`` for each of ``names``.

    Raises:
        ValueError: fewer than 20 observations, non-finite statistics or a bad ``tail``.
    """
    if not 0.0 < tail < 0.5:
        raise ValueError(f"tail must be in (0, 0.5), got {tail}")
    out: dict = {}
    for name in names:
        u = _log(stats[name])
        if u.size < 20:
            raise ValueError(f"novelty calibration needs at least 20 observations, got {u.size}")
        if not np.isfinite(u).all():
            raise ValueError(f"novelty calibration: non-finite {name}")
        lo, med, hi = np.quantile(u, [tail, 0.5, 1.0 - tail])
        out[name] = {"low": float(lo), "median": float(med), "high": float(hi)}
        out["samples"] = int(u.size)
    return out


class Novelty:
    """Scores observations against a bundle's ``novelty`` manifest block.

    Args:
        block: the manifest block (``version``, ``tail``, ``threshold``, ``modalities``: modality → :func:`calibrate`
            entry), or None (no calibration: :meth:`score` returns None).
        where: the file named in errors.

    Attributes:
        threshold: float, the calibrated default threshold (block ``threshold``; :data:`DEFAULT_THRESHOLD`).

    Raises:
        NoveltyError: an unknown block version, missing keys, non-finite values or low > median > high violated.
    """

    def __init__(self, block: Mapping | None, where: str = "manifest.json"):
        self.block = block
        self.entries: dict = {}
        self.threshold = DEFAULT_THRESHOLD
        #: the statistics the block calibrates (a subset of :data:`STATISTICS`)
        self.statistics: tuple = ()
        if block is None:
            return
        if not isinstance(block, Mapping) or block.get("version") not in READ_VERSIONS:
            raise NoveltyError(f"{where}: novelty block version {getattr(block, 'get', lambda k: None)('version')!r} "
                               f"is not one of {list(READ_VERSIONS)} (this runtime reads those)")
        try:
            self.threshold = float(block.get("threshold", DEFAULT_THRESHOLD))
            self.statistics = tuple(str(n) for n in block["statistics"])
            known = STATISTICS if block.get("version") >= 2 else STATISTICS[:3]
            if not self.statistics or not set(self.statistics) <= set(known):
                raise NoveltyError(f"{where}: novelty.statistics {list(self.statistics)} must be a non-empty subset "
                                   f"of {list(known)} (block version {block.get('version')})")
            mods = dict(block["modalities"])
            for m, entry in mods.items():
                e = {}
                for name in self.statistics:
                    lo, med, hi = (float(entry[name][k]) for k in ("low", "median", "high"))
                    if not (np.isfinite([lo, med, hi]).all() and lo <= med <= hi):
                        raise NoveltyError(f"{where}: novelty.modalities.{m}.{name} must have finite "
                                           "low ≤ median ≤ high")
                    e[name] = (lo, med, hi)
                e["feature_mean"] = np.asarray(entry["feature_mean"], np.float64).reshape(-1)
                e["feature_precision"] = np.asarray(entry["feature_precision"], np.float64)
                d = e["feature_mean"].shape[0]
                if e["feature_precision"].shape != (d, d) or not (np.isfinite(e["feature_mean"]).all()
                                                                  and np.isfinite(e["feature_precision"]).all()):
                    raise NoveltyError(f"{where}: novelty.modalities.{m}: feature_mean / feature_precision must be "
                                       f"finite, (D*,) and (D*, D*)")
                e["mixture"] = None
                if "feature_mixture" in self.statistics:
                    mix = entry["mixture"]
                    try:
                        e["mixture"] = Mixture(mix["weights"], mix["means"], mix["precisions"])
                    except ValueError as exc:
                        raise NoveltyError(f"{where}: novelty.modalities.{m}.{exc}") from None
                    if e["mixture"].means.shape[1] != d:
                        raise NoveltyError(f"{where}: novelty.modalities.{m}.mixture: means of dimension "
                                           f"{e['mixture'].means.shape[1]}, feature_mean of {d}")
                # (median, 1 / (high − median), 1 / (median − low)) per statistic, as (S, 1) columns for score()
                iv = np.array([e[name] for name in self.statistics], np.float64)
                e["interval"] = (iv[:, 1:2], 1.0 / np.maximum(iv[:, 2:3] - iv[:, 1:2], 1e-9),
                                 1.0 / np.maximum(iv[:, 1:2] - iv[:, 0:1], 1e-9))
                self.entries[str(m)] = e
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, NoveltyError):
                raise
            raise NoveltyError(f"{where}: malformed novelty block ({type(exc).__name__}: {exc})") from None
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise NoveltyError(f"{where}: novelty.threshold must be finite and > 0")

    def has(self, modality: str) -> bool:
        """True when ``modality`` is calibrated (its observations get a score)."""
        return modality in self.entries

    def reference(self, modality: str) -> tuple:
        """(feature_mean, feature_precision) of ``modality`` for :func:`statistics` ((None, None) uncalibrated)."""
        e = self.entries.get(modality)
        return (None, None) if e is None else (e["feature_mean"], e["feature_precision"])

    @property
    def needs_reconstruction(self) -> bool:
        """True when the score needs the β-VAE decoder (``reconstruction_error`` is calibrated)."""
        return "reconstruction_error" in self.statistics

    def score_observation(self, modality: str, x, mean, log_variance, reconstruct) -> np.ndarray | None:
        """:meth:`score` of observations given their preprocessed input float32 (N, *shape), β-VAE posterior
        (N, D*) and ``reconstruct(mean)`` → β-VAE decoder mean (called only when :attr:`needs_reconstruction`)."""
        if modality not in self.entries:
            return None
        rec = reconstruct(mean) if self.needs_reconstruction else None
        ref = self.reference(modality) if "feature_distance" in self.statistics else (None, None)
        return self.score(modality, statistics(x, mean, log_variance, rec, *ref,
                                               mixture=self.entries[modality]["mixture"]))

    def score(self, modality: str, stats: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Novelty scores float64 (N,) of observations with :func:`statistics` ``stats`` (≥ 0; > 1 beyond the
        calibrated interval of some statistic; NaN statistics score inf), or None for an uncalibrated modality."""
        e = self.entries.get(modality)
        if e is None:
            return None
        med, up_scale, down_scale = e["interval"]                                  # (S, 1) each
        cols = [np.asarray(stats[name], np.float64).reshape(-1) for name in self.statistics]
        if cols[0].size == 1:  # one observation (the node's case): the same arithmetic on floats, no temporaries
            return np.array([max(_score_one(float(c[0]), med[i, 0], up_scale[i, 0], down_scale[i, 0])
                                 for i, c in enumerate(cols))])
        u = _log(np.stack(cols))
        s = np.maximum(np.maximum((u - med) * up_scale, (med - u) * down_scale), 0.0)       # (S, N)
        s[np.isnan(u)] = np.inf
        return s.max(axis=0)


def make_block(entries: Mapping[str, Mapping], *, tail: float, threshold: float = DEFAULT_THRESHOLD,
               data: Mapping | None = None, names: tuple = DEFAULT_STATISTICS) -> dict:
    """The manifest ``novelty`` block from per-modality :func:`calibrate` entries of statistics ``names``."""
    block = {"version": BLOCK_VERSION, "statistics": list(names), "transform": "log(s + 1e-12)",
             "tail": float(tail), "threshold": float(threshold), "modalities": {m: dict(e) for m, e in entries.items()}}
    if data is not None:
        block["data"] = dict(data)
    Novelty(block, "computed novelty block")
    return block


def load(manifest: Mapping, path: str = "") -> Novelty:
    """The :class:`Novelty` of a manifest (its ``novelty`` block, or an uncalibrated one when absent)."""
    return Novelty(manifest.get("novelty"), os.path.join(path, "manifest.json") if path else "manifest.json")
