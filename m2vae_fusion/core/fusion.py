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
benchmarks). Every output is checked: a non-finite latent or probability raises :class:`FusionError`.
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
    fusion whose outputs are not finite.

    Args:
        message: what was refused and why.
        reason: the typed drop reason (:class:`~m2vae_fusion.core.reasons.DropReason`), ``reason`` attribute.
    """

    def __init__(self, message: str, reason: DropReason = DropReason.FUSION):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Slot:
    """Evidence held for one modality: ``stamp`` (s, the observation's time) and the observing ``agent``."""

    stamp: float
    agent: str


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


def _check_vector(name: str, v, size: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    if a.shape[0] != size:
        raise FusionError(f"{name} has {a.shape[0]} values, expected {size}")
    if not np.all(np.isfinite(a)):
        raise FusionError(f"{name} has non-finite values")
    return a


def _check_outputs(what: str, mean: np.ndarray, logvar: np.ndarray, probs: np.ndarray | None) -> None:
    """Validate a fusion's outputs (finite-but-extreme inputs can give NaN or inf outputs)."""
    for name, a in (("latent mean", mean), ("latent log-variance", logvar), ("class probabilities", probs)):
        if a is not None and not np.isfinite(a).all():
            raise FusionError(f"{what} gave a non-finite {name}", DropReason.NON_FINITE)


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
        self._probs: "OrderedDict[bytes, np.ndarray]" = OrderedDict()

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
        feats = self._decode(np.asarray(z, np.float32), held) if held else {}
        feats[modality] = np.asarray(feature, dtype=np.float32)
        out = self._encode(feats, with_probs=True)
        _check_outputs(f"fusing {modality} into {'+'.join(held) or 'no belief'}", *out)
        return out

    def reencode_batch(self, z: np.ndarray, have: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One decode → re-encode step of beliefs with slots ``have``: float32 (N, Dz) → mean, log-variance.

        Raises:
            FusionError: non-finite outputs (``reason`` NON_FINITE).
        """
        mean, logvar, probs = self._encode(self._decode(np.asarray(z, np.float32), list(have)), with_probs=False)
        _check_outputs(f"re-encoding {'+'.join(have)}", mean, logvar, probs)
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
            FusionError: unknown modality, wrong size or non-finite feature, evidence older than the belief's
                evidence for the same modality (stale), or non-finite fusion outputs (``reason`` NON_FINITE).
        """
        if modality not in self.order:
            raise FusionError(f"unknown modality {modality!r}; bundle has {list(self.order)}")
        f = _check_vector(f"{modality} feature", feature, self.bundle.feature_dim)
        if belief is not None and modality in belief.slots and stamp < belief.slots[modality].stamp:
            raise FusionError(f"stale {modality} observation ({stamp:.3f} s older than held "
                              f"{belief.slots[modality].stamp:.3f} s)")
        if belief is not None and belief.target_id != target_id:
            raise FusionError(f"belief is about {belief.target_id!r}, observation about {target_id!r}")
        have = belief.modalities(self.order) if belief is not None else ()
        z = belief.mean[None] if belief is not None else None
        mean, logvar, probs = self.fuse_batch_full(z, have, modality, f[None])
        self._remember(mean[0], None if probs is None else probs[0])
        slots = dict(belief.slots) if belief is not None else {}
        slots[modality] = Slot(float(stamp), str(agent))
        return Belief(target_id, mean[0], logvar[0], slots, self.clock())

    def merge(self, own: Belief | None, peer: Belief) -> tuple[Belief, bool]:
        """Merge a peer's belief about the same target: union of slots, one value per slot.

        Each slot is taken from the belief with the newer evidence for it (ties keep the own value). If nothing is
        newer on the peer's side the own belief is returned unchanged; if the peer holds all the own evidence (the
        same slots, or newer) and more, the peer's latent is adopted as is (no re-encoding, no drift, and the two
        agents agree exactly); otherwise both are decoded into their chosen slots and
        re-encoded with the subset encoder of the union (FUSION 2019, Eq. 18 applied to latents): with chains, one
        decode run on both latents (N = 2) and one encode run.

        Returns:
            (belief, changed): ``changed`` is False when the peer added nothing (then do not re-publish).

        Raises:
            FusionError: wrong sizes, non-finite values, unknown modalities, a different target, or non-finite
                fusion outputs (``reason`` NON_FINITE).
        """
        mean = _check_vector("peer latent mean", peer.mean, self.bundle.latent_dim)
        logvar = _check_vector("peer latent log-variance", peer.log_variance, self.bundle.latent_dim)
        if not peer.slots:
            raise FusionError("peer latent names no modalities")
        unknown = set(peer.slots).difference(self.order)
        if unknown:
            raise FusionError(f"peer latent names unknown modalities {sorted(unknown)}")
        if own is not None and own.target_id != peer.target_id:
            raise FusionError(f"belief is about {own.target_id!r}, peer latent about {peer.target_id!r}")
        if own is None:
            return Belief(peer.target_id, mean.copy(), logvar.copy(), dict(peer.slots), self.clock()), True
        from_peer = [m for m in peer.slots if m not in own.slots or peer.slots[m].stamp > own.slots[m].stamp]
        if not from_peer:
            return own, False
        union = set(own.slots) | set(peer.slots)
        slots = {m: (peer.slots[m] if m in from_peer else own.slots[m]) for m in union}
        # evidence only the own belief holds (a slot the peer lacks, or holds older); equal slots are the same evidence
        own_only = [m for m in union if m not in from_peer and peer.slots.get(m) != own.slots[m]]
        if not own_only:  # the peer's latent already contains everything: adopt it, no re-encoding, no drift
            return Belief(own.target_id, mean.copy(), logvar.copy(), slots, self.clock()), True
        ordered = [m for m in self.order if m in union]
        if self.chains:
            both = self.bundle.decode_slots(np.stack([np.asarray(own.mean, np.float32), mean]), ordered)
            feats = {m: both[m][1:2] if m in from_peer else both[m][0:1] for m in ordered}
        else:
            feats = {m: self.bundle.decode(m, (mean if m in from_peer else own.mean)[None]) for m in ordered}
        new_mean, new_logvar, probs = self._encode(feats, with_probs=True)
        _check_outputs(f"merging {'+'.join(ordered)}", new_mean, new_logvar, probs)
        self._remember(new_mean[0], None if probs is None else probs[0])
        return Belief(own.target_id, new_mean[0], new_logvar[0], slots, self.clock()), True

    def reencode(self, belief: Belief) -> Belief:
        """One decode → re-encode step of ``belief`` (same slots)."""
        mean, logvar = self.reencode_batch(belief.mean[None], belief.modalities(self.order))
        return Belief(belief.target_id, mean[0], logvar[0], dict(belief.slots), belief.updated)

    def z_diff(self, belief: Belief, steps: int = 1) -> float:
        """z_diff of ``belief`` after ``steps`` re-encodings (FUSION 2019, Eq. 21), in latent units."""
        return float(self.z_diff_batch(belief.mean[None], belief.modalities(self.order), steps)[0])

    def classify(self, belief: Belief) -> np.ndarray | None:
        """Class probabilities float32 (C,) of ``belief``'s latent mean, or None for a bundle without a head.

        After :meth:`observe` or :meth:`merge` the probabilities their chain run computed for that mean are
        returned (a copy; no session run); otherwise the head runs.

        Raises:
            FusionError: non-finite probabilities (``reason`` NON_FINITE).
        """
        if not self.bundle.has_head:
            return None
        key = np.ascontiguousarray(belief.mean, np.float32).tobytes()
        p = self._probs.get(key)
        if p is not None:
            return p.copy()
        p = self.bundle.classify(np.asarray(belief.mean, np.float32)[None])
        if not np.all(np.isfinite(p)):
            raise FusionError("class-belief head gave non-finite probabilities", DropReason.NON_FINITE)
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
