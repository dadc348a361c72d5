"""In-place fusion of observations and of other agents' latents into one belief per target (no ROS, no torch).

A :class:`Belief` is a point in the shared M2VAE latent space plus the *slots* it was built from: for each modality
whose evidence it contains, the stamp of that evidence and the agent that observed it. Fusion follows Korthals et
al., FUSION 2019, Eq. 18: decode the belief into the β-VAE features of its other slots, put the new observation in
its own slot, and re-encode with the subset encoder of the union. A peer's latent is merged the same way: each slot
is taken from whichever belief holds the newer evidence for it (one value per slot, never two), so fusing the same
information twice does not count it twice. z_diff is Eq. 21.
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
    """Evidence that cannot be fused (wrong size, non-finite values, unknown modality, stale, other model).

    ``reason``: a :class:`~m2vae_fusion.core.reasons.DropReason` (``STALE`` for evidence older than the slot held,
    else ``FUSION``); match on it, never on the message text.
    """

    def __init__(self, message: str, reason: DropReason = DropReason.FUSION):
        super().__init__(message)
        self.reason = DropReason(reason)


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


class FusionEngine:
    """In-place fusion with one bundle's networks.

    Args:
        bundle: the loaded model bundle (all agents that exchange latents must use the same ``model_id``).
        clock: monotonic clock for :attr:`Belief.updated` (seconds).
    """

    def __init__(self, bundle: Bundle, clock: Callable[[], float] = time.monotonic):
        self.bundle = bundle
        self.clock = clock
        self.order = bundle.modalities

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
        """
        feats = {m: self.bundle.decode(m, z) for m in have if m != modality} if z is not None else {}
        feats[modality] = np.asarray(feature, dtype=np.float32)
        return self.bundle.encode_subset(feats)

    def reencode_batch(self, z: np.ndarray, have: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One decode → re-encode step of beliefs with slots ``have``: float32 (N, Dz) → mean, log-variance."""
        return self.bundle.encode_subset({m: self.bundle.decode(m, z) for m in have})

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
            FusionError: unknown modality, wrong size or non-finite feature, or evidence older than the belief's
                evidence for the same modality (stale).
        """
        if modality not in self.order:
            raise FusionError(f"unknown modality {modality!r}; bundle has {list(self.order)}")
        f = _check_vector(f"{modality} feature", feature, self.bundle.feature_dim)
        if belief is not None and modality in belief.slots and stamp < belief.slots[modality].stamp:
            raise FusionError(f"stale {modality} observation ({stamp:.3f} s older than held "
                              f"{belief.slots[modality].stamp:.3f} s)", DropReason.STALE)
        if belief is not None and belief.target_id != target_id:
            raise FusionError(f"belief is about {belief.target_id!r}, observation about {target_id!r}")
        have = belief.modalities(self.order) if belief is not None else ()
        z = belief.mean[None] if belief is not None else None
        mean, logvar = self.fuse_batch(z, have, modality, f[None])
        slots = dict(belief.slots) if belief is not None else {}
        slots[modality] = Slot(float(stamp), str(agent))
        return Belief(target_id, mean[0], logvar[0], slots, self.clock())

    def merge(self, own: Belief | None, peer: Belief) -> tuple[Belief, bool]:
        """Merge a peer's belief about the same target: union of slots, one value per slot.

        Each slot is taken from the belief with the newer evidence for it (ties keep the own value). If nothing is
        newer on the peer's side the own belief is returned unchanged; if the peer holds all the own evidence (the
        same slots, or newer) and more, the peer's latent is adopted as is (no re-encoding, no drift, and the two
        agents agree exactly); otherwise both are decoded into their chosen slots and
        re-encoded with the subset encoder of the union (FUSION 2019, Eq. 18 applied to latents).

        Returns:
            (belief, changed): ``changed`` is False when the peer added nothing (then do not re-publish).

        Raises:
            FusionError: wrong sizes, non-finite values, unknown modalities or a different target.
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
        feats = {}
        for m in union:
            src = mean if m in from_peer else own.mean
            feats[m] = self.bundle.decode(m, src[None])
        new_mean, new_logvar = self.bundle.encode_subset(feats)
        return Belief(own.target_id, new_mean[0], new_logvar[0], slots, self.clock()), True

    def reencode(self, belief: Belief) -> Belief:
        """One decode → re-encode step of ``belief`` (same slots)."""
        mean, logvar = self.reencode_batch(belief.mean[None], belief.modalities(self.order))
        return Belief(belief.target_id, mean[0], logvar[0], dict(belief.slots), belief.updated)

    def z_diff(self, belief: Belief, steps: int = 1) -> float:
        """z_diff of ``belief`` after ``steps`` re-encodings (FUSION 2019, Eq. 21), in latent units."""
        return float(self.z_diff_batch(belief.mean[None], belief.modalities(self.order), steps)[0])

    def classify(self, belief: Belief) -> np.ndarray | None:
        """Class probabilities float32 (C,) of ``belief``'s latent mean, or None for a bundle without a head."""
        p = self.bundle.classify(belief.mean[None])
        return None if p is None else p[0]


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
