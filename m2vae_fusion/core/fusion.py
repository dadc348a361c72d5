"""In-place fusion of observations and of other agents' latents into one belief per target (no ROS, no torch).

A :class:`Belief` is a point in the shared M2VAE latent space plus the *slots* it was built from: for each modality
whose evidence it contains, the stamp of that evidence and the agent that observed it. Fusion follows Korthals et
al., FUSION 2019, Eq. 18: decode the belief into the β-VAE features of its other slots, put the new observation in
its own slot, and re-encode with the subset encoder of the union. A peer's latent is merged the same way: each slot
is taken from whichever belief holds the newer evidence for it (one value per slot, never two), so fusing the same
information twice does not count it twice. z_diff is Eq. 21.

The engine runs the bundle's merged chain graphs (:mod:`m2vae_fusion.core.chains`) with onnxruntime IOBinding: one
decode run for the held slots and one encode run (subset encoder → head) per observation; ``chains=False`` runs the
per-network sessions instead (same numbers within float rounding; kept as the reference for parity checks and
benchmarks).

Outputs are validated before anything is stored or returned (docs/formats.md, "latent_bounds"): decoded features,
latent means and log-variances must be finite (else ``FusionError`` with ``DropReason.NON_FINITE``); class
probabilities finite, in [0, 1] and summing to 1 within :data:`PROBABILITY_TOL` (else ``INVALID_OUTPUT``). With a
format-v3 bundle (``Bundle.latent_bounds``) a peer latent mean outside the training ranges plus margin is refused
(``OUT_OF_RANGE``), as is an own encoding (observe / merge / re-encode output) outside them
(``ENCODING_OUT_OF_RANGE``); every log-variance stored (a peer's or the engine's) is clipped to the training range, so
the precision 1/σ² of a contribution and of a belief never exceeds the highest precision a subset encoder gave in
training. In this fusion a belief is one subset-encoder posterior (slots are replaced by newer evidence, never
multiplied), so the belief cap equals the contribution cap. A refused step leaves the belief passed in unchanged:
engine methods never modify their arguments.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.reasons import DropReason


class FusionError(ValueError):
    """Evidence that cannot be fused (wrong size, non-finite values, unknown modality, stale, other model), or a
    fusion whose outputs are not finite or out of range.

    ``reason``: a :class:`~m2vae_fusion.core.reasons.DropReason` (e.g. ``STALE`` for evidence older than the slot
    held, ``NON_FINITE``, ``OUT_OF_RANGE``, else ``FUSION``); match on it, never on the message text.

    Args:
        message: what was refused and why.
        reason: the typed drop reason, kept as the ``reason`` attribute.
    """

    def __init__(self, message: str, reason: DropReason = DropReason.FUSION):
        super().__init__(message)
        self.reason = DropReason(reason)


@dataclass(frozen=True)
class Slot:
    """Evidence held for one modality: ``stamp`` (s, the observation's time) and the observing ``agent``;
    ``incarnation``: start stamp (int ns) of the observing agent's process, 0 when unknown (message format 2). Not
    part of equality: the same observation is the same evidence whoever relays it."""

    stamp: float
    agent: str
    incarnation: int = field(default=0, compare=False)


@dataclass
class Belief:
    """An agent's belief about one target.

    Attributes:
        target_id: which object it is about.
        mean: float32 (Dz,) latent mean; log_variance: float32 (Dz,) latent log-variance.
        slots: modality → :class:`Slot` for every modality whose evidence the belief contains.
        updated: local monotonic time (s) of the last change, used for the time-to-live.
    """

    target_id: str
    mean: np.ndarray
    log_variance: np.ndarray
    slots: dict = field(default_factory=dict)
    updated: float = 0.0

    @property
    def stamp(self) -> float:
        """Stamp (s) of the newest evidence."""
        return max(s.stamp for s in self.slots.values())

    @property
    def contributors(self) -> tuple:
        """Agents whose evidence the belief holds, sorted."""
        return tuple(sorted({s.agent for s in self.slots.values()}))

    def modalities(self, order: Sequence[str]) -> tuple:
        """Modalities with evidence, in ``order``."""
        return tuple(m for m in order if m in self.slots)


#: tolerance of the probability check: each in [−tol, 1 + tol], |Σ − 1| ≤ tol (float32 softmax of C ≤ 100 classes)
PROBABILITY_TOL = 1e-3


def _check_vector(name: str, v, size: int) -> np.ndarray:
    """A fresh float32 (size,) copy of ``v``; FusionError MISMATCH (wrong size) or NON_FINITE."""
    try:
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: refused below
            a = np.array(v, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise FusionError(f"{name} is not a float vector ({exc})", DropReason.MISMATCH) from None
    if a.shape[0] != size:
        raise FusionError(f"{name} has {a.shape[0]} values, expected {size}", DropReason.MISMATCH)
    if not np.isfinite(a).all():
        raise FusionError(f"{name} has non-finite values", DropReason.NON_FINITE)
    return a


def check_probabilities(what: str, probs: np.ndarray | None) -> None:
    """Validate class probabilities float32 (N, C): finite, each in [0, 1] and each row summing to 1 within
    :data:`PROBABILITY_TOL`.

    Raises:
        FusionError: ``reason`` NON_FINITE (NaN/inf) or INVALID_OUTPUT (out of [0, 1] or not normalised).
    """
    if probs is None:
        return
    p = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(p).all():
        raise FusionError(f"{what} gave non-finite class probabilities", DropReason.NON_FINITE)
    if p.size and (p.min() < -PROBABILITY_TOL or p.max() > 1 + PROBABILITY_TOL):
        raise FusionError(f"{what} gave class probabilities outside [0, 1] ({p.min():.3g}..{p.max():.3g})",
                          DropReason.INVALID_OUTPUT)
    if p.size and np.abs(p.sum(axis=-1) - 1.0).max() > PROBABILITY_TOL:
        raise FusionError(f"{what} gave class probabilities summing to {p.sum(axis=-1).ravel()[0]:.6g}, not 1",
                          DropReason.INVALID_OUTPUT)


def _check_outputs(what: str, mean: np.ndarray, logvar: np.ndarray, probs: np.ndarray | None) -> None:
    """Validate a fusion's outputs (finite-but-extreme inputs can give NaN or inf outputs)."""
    for name, a in (("latent mean", mean), ("latent log-variance", logvar)):
        if not np.isfinite(a).all():
            raise FusionError(f"{what} gave a non-finite {name}", DropReason.NON_FINITE)
    check_probabilities(what, probs)


def _check_features(what: str, feats: Mapping[str, np.ndarray]) -> None:
    """Decoded β-VAE features must be finite (an overflowing decoder would feed inf into the subset encoder)."""
    for m, f in feats.items():
        if not np.isfinite(f).all():
            raise FusionError(f"{what}: the {m} decoder gave non-finite features", DropReason.NON_FINITE)


class FusionEngine:
    """In-place fusion with one bundle's networks.

    Args:
        bundle: the loaded model bundle (all agents that exchange latents must use the same ``model_id``).
        clock: monotonic clock for :attr:`Belief.updated` (seconds).
        chains: run the bundle's merged chain graphs with IOBinding (default); False: the per-network sessions
            (the reference path: one run per decoder, subset encoder and head).
    """

    #: class probabilities remembered per fused latent mean, so classify() after observe()/merge() needs no run
    PROBABILITY_CACHE = 64

    def __init__(self, bundle: Bundle, clock: Callable[[], float] = time.monotonic, chains: bool = True):
        self.bundle = bundle
        self.clock = clock
        self.order = bundle.modalities
        self.chains = bool(chains)
        #: the bundle's :class:`~m2vae_fusion.core.bundle.LatentBounds` (format v3), or None (v2: finiteness only)
        self.bounds = getattr(bundle, "latent_bounds", None)
        self._probs: "OrderedDict[bytes, np.ndarray]" = OrderedDict()

    # -- validation of what is accepted and stored ----------------------------------------------------------------
    def check_peer_latent(self, mean: np.ndarray, what: str = "peer latent mean") -> None:
        """Refuse a latent mean (Dz,) from outside the engine that lies beyond the bundle's latent bounds plus
        margin (no-op for a format-v2 bundle).

        Raises:
            FusionError: ``reason`` OUT_OF_RANGE, naming the worst dimension.
        """
        if self.bounds is not None and not self.bounds.in_range(mean):
            d, v = self.bounds.worst_dimension(mean)
            raise FusionError(f"{what} is outside the training range (dimension {d}: {v:.4g} not in "
                              f"[{self.bounds.lower[d]:.4g}, {self.bounds.upper[d]:.4g}])", DropReason.OUT_OF_RANGE)

    def _accept_encoding(self, what: str, mean: np.ndarray, logvar: np.ndarray,
                         probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Validate one own output (1, Dz) before it is stored: finite, normalised probabilities, mean within the
        latent bounds (ENCODING_OUT_OF_RANGE); returns it with the log-variance capped."""
        _check_outputs(what, mean, logvar, probs)
        if self.bounds is None:
            return mean, logvar, probs
        if not self.bounds.in_range(mean[0]):
            d, v = self.bounds.worst_dimension(mean[0])
            raise FusionError(f"{what} gave a latent mean outside the training range (dimension {d}: {v:.4g} not in "
                              f"[{self.bounds.lower[d]:.4g}, {self.bounds.upper[d]:.4g}])",
                              DropReason.ENCODING_OUT_OF_RANGE)
        return mean, self.bounds.cap_log_variance(logvar), probs

    def _check_adopted(self, mean: np.ndarray) -> None:
        """A peer latent adopted as is must classify to valid probabilities (the head on an absurd but finite mean
        gives NaN, e.g. |z| ≳ 9e37 for the shipped head); they are remembered, so the classify() that follows
        costs no run."""
        if self.bundle.has_head:
            probs = self.bundle.classify(mean[None])
            check_probabilities("class-belief head on the peer latent", probs)
            self._remember(mean, probs[0])

    def cap_log_variance(self, log_variance: np.ndarray) -> np.ndarray:
        """``log_variance`` clipped to the bundle's training range (a copy; unchanged values without bounds)."""
        lv = np.array(log_variance, dtype=np.float32)
        return lv if self.bounds is None else self.bounds.cap_log_variance(lv)

    # -- one fusion step ------------------------------------------------------------------------------------------
    def _decode(self, z: np.ndarray, slots: Sequence[str]) -> dict:
        """Decoded features of ``slots`` from latents float32 (N, Dz): one chain run, or one run per decoder."""
        if not slots:
            return {}
        if self.chains:
            return self.bundle.decode_slots(z, slots)
        return {m: self.bundle.decode(m, z) for m in slots}

    def _encode(self, feats: Mapping[str, np.ndarray], with_probs: bool):
        """Subset encoder of the slots of ``feats`` (→ head): mean, log-variance (N, Dz), probabilities or None."""
        if self.chains:
            return self.bundle.encode_slots(feats)
        mean, logvar = self.bundle.encode_subset(feats)
        return mean, logvar, (self.bundle.classify(mean) if with_probs else None)

    def _remember(self, mean: np.ndarray, probs: np.ndarray | None) -> None:
        if probs is None:
            return
        key = np.ascontiguousarray(mean, np.float32).tobytes()
        self._probs[key] = probs
        self._probs.move_to_end(key)
        while len(self._probs) > self.PROBABILITY_CACHE:
            self._probs.popitem(last=False)

    # -- batched primitives (used by eval on whole test sets and by the single-belief API) ----------------------
    def fuse_batch(self, z: np.ndarray | None, have: Sequence[str], modality: str,
                   feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 18 on a batch: ``z* = mean of q_{M' ∪ {m}}(x_m, f(M'))`` with ``f(M')`` the decoder means.

        Args:
            z: float32 (N, Dz) latent means of beliefs built from modalities ``have`` (None or ``have`` empty: no
                belief yet).
            have: modalities M' whose slots the beliefs hold.
            modality: m, the newly observed modality (its slot is replaced if already held).
            feature: float32 (N, D*) β-VAE feature (encoder mean) of the new observation.

        Returns:
            mean, log-variance float32 (N, Dz) of the subset encoder of M' ∪ {m}.

        Raises:
            FusionError: non-finite outputs (``reason`` NON_FINITE).
        """
        mean, logvar, _ = self.fuse_batch_full(z, have, modality, feature)
        return mean, logvar

    def fuse_batch_full(self, z: np.ndarray | None, have: Sequence[str], modality: str, feature: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`fuse_batch` plus the class probabilities float32 (N, C) of the fused mean (None without a head),
        from the same chain run (2 session runs with a belief, 1 without)."""
        held = [m for m in have if m != modality] if z is not None else []
        what = f"fusing {modality} into {'+'.join(held) or 'no belief'}"
        feats = self._decode(np.asarray(z, np.float32), held) if held else {}
        _check_features(what, feats)
        feats[modality] = np.asarray(feature, dtype=np.float32)
        out = self._encode(feats, with_probs=True)
        _check_outputs(what, *out)
        return out

    def reencode_batch(self, z: np.ndarray, have: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One decode → re-encode step of beliefs with slots ``have``: float32 (N, Dz) → mean, log-variance.

        Raises:
            FusionError: non-finite outputs (``reason`` NON_FINITE).
        """
        what = f"re-encoding {'+'.join(have)}"
        feats = self._decode(np.asarray(z, np.float32), list(have))
        _check_features(what, feats)
        mean, logvar, probs = self._encode(feats, with_probs=False)
        _check_outputs(what, mean, logvar, probs)
        return mean, logvar

    def z_diff_batch(self, z: np.ndarray, have: Sequence[str], steps: int = 1) -> np.ndarray:
        """z_diff (FUSION 2019, Eq. 21): ``‖z − z_reenc‖₂`` after ``steps`` decode → re-encode steps, float (N,)."""
        cur = z
        for _ in range(steps):
            cur, _ = self.reencode_batch(cur, have)
        return np.linalg.norm(cur - z, axis=1)

    # -- single beliefs ---------------------------------------------------------------------------------------
    def observe(self, belief: Belief | None, target_id: str, modality: str, feature, stamp: float,
                agent: str) -> Belief:
        """Fuse one observation of ``modality`` in place (Eq. 18) into ``belief`` (None: start a new belief).

        Args:
            feature: float32 (D*,) β-VAE feature of the observation.
            stamp: observation time (s). agent: the observing agent's id.

        Returns:
            the new belief (the input belief is not modified).

        Raises:
            FusionError: with ``reason`` MISMATCH (unknown modality, wrong size), NON_FINITE (non-finite feature or
                stamp, or non-finite decoded features / fusion outputs), STALE (evidence older than the belief's
                evidence for the same modality), INVALID_OUTPUT (probabilities not in [0, 1] or not summing to 1),
                ENCODING_OUT_OF_RANGE (format v3: the fused latent mean is outside the latent bounds), FUSION (a
                belief about another target). The belief passed in is never modified.
        """
        if modality not in self.order:
            raise FusionError(f"unknown modality {modality!r}; bundle has {list(self.order)}", DropReason.MISMATCH)
        f = _check_vector(f"{modality} feature", feature, self.bundle.feature_dim)
        if not math.isfinite(float(stamp)):
            raise FusionError(f"{modality} observation has a non-finite stamp", DropReason.NON_FINITE)
        if belief is not None and modality in belief.slots and stamp < belief.slots[modality].stamp:
            raise FusionError(f"stale {modality} observation ({stamp:.3f} s older than held "
                              f"{belief.slots[modality].stamp:.3f} s)", DropReason.STALE)
        if belief is not None and belief.target_id != target_id:
            raise FusionError(f"belief is about {belief.target_id!r}, observation about {target_id!r}")
        have = belief.modalities(self.order) if belief is not None else ()
        z = np.array(belief.mean, dtype=np.float32)[None] if belief is not None else None
        what = f"fusing {modality} into {'+'.join(have) or 'no belief'}"
        mean, logvar, probs = self._accept_encoding(what, *self.fuse_batch_full(z, have, modality, f[None]))
        self._remember(mean[0], None if probs is None else probs[0])
        slots = dict(belief.slots) if belief is not None else {}
        slots[modality] = Slot(float(stamp), str(agent))
        return Belief(target_id, mean[0], logvar[0], slots, self.clock())

    def merge(self, own: Belief | None, peer: Belief) -> tuple[Belief, bool]:
        """Merge a peer's belief about the same target: union of slots, one value per slot.

        Each slot is taken from the belief with the newer evidence for it (ties keep the own value). If nothing is
        newer on the peer's side the own belief is returned unchanged; if the peer holds all the own evidence (the
        same slots, or newer) and more, the peer's latent is adopted as is (no re-encoding, no drift, and the two
        agents agree exactly) once the head gives valid probabilities for it (remembered for :meth:`classify`, so
        the run is not repeated); otherwise both are decoded into their chosen slots and
        re-encoded with the subset encoder of the union (FUSION 2019, Eq. 18 applied to latents): with chains, one
        decode run on both latents (N = 2) and one encode run.

        Returns:
            (belief, changed): ``changed`` is False when the peer added nothing (then do not re-publish).

        The peer's mean must lie within the bundle's latent bounds (format v3) and its log-variance is capped to
        the training range before it is stored (adopted) or used.

        Raises:
            FusionError: with ``reason`` MISMATCH (wrong sizes, no or unknown modalities), NON_FINITE (non-finite
                peer values or stamps, non-finite decoded features or fusion outputs), OUT_OF_RANGE (format v3: the
                peer's mean is outside the latent bounds plus margin), INVALID_OUTPUT (probabilities not in [0, 1]
                or not summing to 1), ENCODING_OUT_OF_RANGE (format v3: the re-encoded union is outside the bounds),
                FUSION (a different target). Neither belief passed in is ever modified.
        """
        mean = _check_vector("peer latent mean", peer.mean, self.bundle.latent_dim)
        logvar = _check_vector("peer latent log-variance", peer.log_variance, self.bundle.latent_dim)
        if not peer.slots:
            raise FusionError("peer latent names no modalities", DropReason.MISMATCH)
        unknown = set(peer.slots).difference(self.order)
        if unknown:
            raise FusionError(f"peer latent names unknown modalities {sorted(unknown)}", DropReason.MISMATCH)
        if not all(math.isfinite(float(sl.stamp)) for sl in peer.slots.values()):
            raise FusionError("peer latent has a non-finite slot stamp", DropReason.NON_FINITE)
        if own is not None and own.target_id != peer.target_id:
            raise FusionError(f"belief is about {own.target_id!r}, peer latent about {peer.target_id!r}")
        self.check_peer_latent(mean)
        logvar = self.cap_log_variance(logvar)
        if own is None:
            self._check_adopted(mean)
            return Belief(peer.target_id, mean, logvar, dict(peer.slots), self.clock()), True
        from_peer = [m for m in peer.slots if m not in own.slots or peer.slots[m].stamp > own.slots[m].stamp]
        if not from_peer:
            return own, False
        union = set(own.slots) | set(peer.slots)
        slots = {m: (peer.slots[m] if m in from_peer else own.slots[m]) for m in union}
        # evidence only the own belief holds (a slot the peer lacks, or holds older); equal slots are the same evidence
        own_only = [m for m in union if m not in from_peer and peer.slots.get(m) != own.slots[m]]
        if not own_only:  # the peer's latent already contains everything: adopt it, no re-encoding, no drift
            self._check_adopted(mean)
            return Belief(own.target_id, mean, logvar, slots, self.clock()), True
        ordered = [m for m in self.order if m in union]
        what = f"merging {'+'.join(ordered)}"
        own_mean = np.array(own.mean, dtype=np.float32)
        if self.chains:
            both = self.bundle.decode_slots(np.stack([own_mean, mean]), ordered)
            feats = {m: both[m][1:2] if m in from_peer else both[m][0:1] for m in ordered}
        else:
            feats = {m: self.bundle.decode(m, (mean if m in from_peer else own_mean)[None]) for m in ordered}
        _check_features(what, feats)
        new_mean, new_logvar, probs = self._accept_encoding(what, *self._encode(feats, with_probs=True))
        self._remember(new_mean[0], None if probs is None else probs[0])
        return Belief(own.target_id, new_mean[0], new_logvar[0], slots, self.clock()), True

    def reencode(self, belief: Belief) -> Belief:
        """One decode → re-encode step of ``belief`` (same slots; the belief passed in is not modified).

        Raises:
            FusionError: NON_FINITE (non-finite outputs) or ENCODING_OUT_OF_RANGE (format v3: the re-encoded mean
                is outside the latent bounds).
        """
        have = belief.modalities(self.order)
        mean, logvar = self.reencode_batch(np.array(belief.mean, dtype=np.float32)[None], have)
        mean, logvar, _ = self._accept_encoding(f"re-encoding {'+'.join(have)}", mean, logvar, None)
        return Belief(belief.target_id, mean[0], logvar[0], dict(belief.slots), belief.updated)

    def z_diff(self, belief: Belief, steps: int = 1) -> float:
        """z_diff of ``belief`` after ``steps`` re-encodings (FUSION 2019, Eq. 21), in latent units."""
        return float(self.z_diff_batch(belief.mean[None], belief.modalities(self.order), steps)[0])

    def classify(self, belief: Belief) -> np.ndarray | None:
        """Class probabilities float32 (C,) of ``belief``'s latent mean, or None for a bundle without a head.

        After :meth:`observe` or :meth:`merge` the probabilities their chain run computed for that mean are
        returned (a copy; no session run); otherwise the head runs.

        Raises:
            FusionError: a wrong-size or non-finite mean (MISMATCH / NON_FINITE), a mean outside the latent bounds
                (OUT_OF_RANGE, format v3), non-finite probabilities (NON_FINITE) or probabilities outside [0, 1] or
                not summing to 1 (INVALID_OUTPUT).
        """
        if not self.bundle.has_head:
            return None
        key = np.ascontiguousarray(belief.mean, np.float32).tobytes()
        p = self._probs.get(key)
        if p is not None:
            return p.copy()
        mean = _check_vector("belief latent mean", belief.mean, self.bundle.latent_dim)
        self.check_peer_latent(mean, "belief latent mean")
        p = self.bundle.classify(mean[None])
        check_probabilities("class-belief head", p)
        return p[0]


class BeliefStore:
    """Beliefs per target with a time-to-live and a bound on the number of targets.

    Args:
        ttl_s: a belief not updated for this long (s) expires; ``math.inf`` or ≤ 0 disables expiry.
        max_targets: at most this many beliefs; adding one more evicts the least recently updated.
        clock: monotonic clock (s), the same as the engine's.
    """

    def __init__(self, ttl_s: float = 60.0, max_targets: int = 64, clock: Callable[[], float] = time.monotonic):
        if max_targets < 1:
            raise ValueError("max_targets must be ≥ 1")
        self.ttl_s = ttl_s if ttl_s and ttl_s > 0 else math.inf
        self.max_targets = int(max_targets)
        self.clock = clock
        self._beliefs: "OrderedDict[str, Belief]" = OrderedDict()
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._beliefs)

    def __contains__(self, target_id: str) -> bool:
        return self.get(target_id) is not None

    def targets(self) -> list:
        """Target ids of live beliefs, least recently updated first."""
        self.expire()
        return list(self._beliefs)

    def get(self, target_id: str) -> Belief | None:
        """The live belief about ``target_id``, or None (expired beliefs are dropped here)."""
        b = self._beliefs.get(target_id)
        if b is not None and self.clock() - b.updated > self.ttl_s:
            del self._beliefs[target_id]
            self.expired += 1
            return None
        return b

    def put(self, belief: Belief) -> list:
        """Store ``belief`` (replacing the old one of its target). Returns the target ids evicted by the bound."""
        self._beliefs.pop(belief.target_id, None)
        self._beliefs[belief.target_id] = belief
        evicted = []
        self.expire()
        while len(self._beliefs) > self.max_targets:
            tid, _ = self._beliefs.popitem(last=False)
            evicted.append(tid)
            self.evicted += 1
        return evicted

    def expire(self) -> list:
        """Drop every belief older than the TTL; returns their target ids."""
        now = self.clock()
        gone = [t for t, b in self._beliefs.items() if now - b.updated > self.ttl_s]
        for t in gone:
            del self._beliefs[t]
        self.expired += len(gone)
        return gone

    def clear(self) -> int:
        """Remove every belief; returns how many there were."""
        n = len(self._beliefs)
        self._beliefs.clear()
        return n

    def items(self) -> Mapping[str, Belief]:
        """Live beliefs by target id (a copy)."""
        self.expire()
        return dict(self._beliefs)
