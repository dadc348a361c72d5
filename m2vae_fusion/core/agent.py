"""One agent's fusion policy as plain Python (no rclpy, no torch): the part of the fusion node that decides.

An :class:`Agent` owns one :class:`~m2vae_fusion.core.fusion.FusionEngine` and one
:class:`~m2vae_fusion.core.fusion.BeliefStore` and applies the agent's rules around them:

- the **target timeline**: TargetOfInterest announcements (stamp → target id); an observation is fused into the
  belief about the target announced last at or before its stamp (an empty id means "no target");
- **stamp checks**: too old (``max_message_age`` / ``max_latent_age``) or too far in the future
  (``future_tolerance``);
- **trust and provenance**: peer latents from agents outside ``trusted`` are refused, also when they relay evidence
  of such agents; a latent claiming evidence of this agent newer than anything this agent observed is spoofed;
- **format and model checks**: a message of another format version or another ``model_id`` is refused;
- **merge only when the peer adds evidence** (a newer slot; FUSION 2019, Eq. 18 applied to latents, see
  :meth:`FusionEngine.merge`), otherwise the latent is counted as redundant and nothing is published;
- **share throttling**: at most ``shared_latent_rate`` latents per second and target go to the shared topic; a newer
  belief within the period replaces the waiting one, which goes out when due (:meth:`Agent.due_shares`,
  :meth:`Agent.next_share_due`, called by the host when it likes: no fixed-rate timer is needed);
- **what to publish**: :class:`Outputs` (plain dataclasses; the ROS node turns them into messages).

Refusals raise :class:`Drop` with a :class:`~m2vae_fusion.core.reasons.DropReason` (never matched on text).
Counters go through ``count(key)`` (the node passes its statistics' ``inc``). Thread-safe: one lock guards the
store and engine, another the target timeline, a third the share queue.

Time: stamps are seconds quantised to microseconds (:func:`ns_to_s`), so ns → s → ns is exact and a latent echoed
between agents never looks newer than the evidence it holds. ``now_s`` arguments are the host's clock in the same
time base as the stamps (ROS time); share throttling uses a monotonic ``clock`` (s).
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from m2vae_fusion.core.messages import LatentData
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.core.fusion import Belief, BeliefStore, FusionEngine, FusionError, Slot
from m2vae_fusion.core.preprocess import PreprocessError, crop_config, preprocess
from m2vae_fusion.core.reasons import DropReason

#: Version of the LatentEmbedding / ClassBelief message format this agent writes and accepts (docs/formats.md).
FORMAT_VERSION = 2
#: Versions a receiver accepts.
ACCEPTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})


def ns_to_s(ns: int) -> float:
    """Integer nanoseconds → seconds quantised to microseconds (exact round trip with :func:`s_to_ns`)."""
    return (int(ns) // 1000) / 1_000_000


def s_to_ns(s: float) -> int:
    """Seconds (microsecond resolution) → integer nanoseconds."""
    return int(round(s * 1e6)) * 1000


class Drop(Exception):
    """An input that is not fused; ``reason`` (a :class:`DropReason`) is counted as ``dropped.<source>.<reason>``."""

    def __init__(self, reason: DropReason, message: str):
        super().__init__(message)
        self.reason = DropReason(reason)


def drop_from(exc: BaseException, default: DropReason = DropReason.INTERNAL_ERROR, prefix: str = "") -> Drop:
    """A :class:`Drop` for an exception that carries a ``reason`` (a :class:`DropReason` or its value, as the
    conversion, preprocessing and fusion errors do); ``default`` for one without a known reason."""
    reason = getattr(exc, "reason", None)
    try:
        reason = DropReason(reason) if reason is not None else default
    except ValueError:
        reason = default
    return Drop(reason, f"{prefix}{exc}")


@dataclass(frozen=True)
class AgentConfig:
    """The agent's policy parameters (the node's parameters of the same names; seconds, Hz).

    ``max_message_age`` ≤ 0: off. ``max_latent_age`` 0: ``belief_ttl``; < 0: off. ``belief_ttl`` ≤ 0: never
    expire. ``shared_latent_rate`` ≤ 0: every update is shared. ``trusted`` empty: every agent is trusted.
    ``share`` False: nothing goes to the shared topic.
    """

    agent_id: str
    modalities: tuple = MODALITIES
    trusted: frozenset = frozenset()
    belief_ttl: float = 30.0
    max_targets: int = 16
    max_message_age: float = 2.0
    max_latent_age: float = 0.0
    future_tolerance: float = 0.5
    target_history: int = 64
    shared_latent_rate: float = 10.0
    share: bool = True
    output_frame_id: str = ""
    #: frame of TargetOfInterest positions the crop uses (positions in another frame: the preprocessing fallback)
    base_frame: str = "base_link"

    #: fields that may change while the agent runs (:meth:`Agent.reconfigure`)
    RUNTIME = ("trusted", "belief_ttl", "max_message_age", "max_latent_age", "future_tolerance",
               "shared_latent_rate", "output_frame_id")

    @property
    def share_period(self) -> float:
        """Seconds between two shared latents of one target (0: no throttling)."""
        return 1.0 / self.shared_latent_rate if self.shared_latent_rate > 0 else 0.0

    @property
    def latent_age_limit(self) -> float:
        """Effective age limit (s) of peer latents; ≤ 0: off."""
        return self.max_latent_age if self.max_latent_age != 0 else self.belief_ttl


@dataclass(frozen=True)
class Target:
    """One TargetOfInterest announcement: from ``stamp`` (s) on, observations are about ``target_id``."""

    stamp: float
    target_id: str
    frame_id: str = ""
    position: Optional[tuple] = None


@dataclass(frozen=True)
class LatentOutput:
    """What a LatentEmbedding message carries (format 2, docs/formats.md). Stamps are integer ns.

    ``mean`` / ``log_variance``: float32 (Dz,). Per-slot tuples have the length and order of ``modalities``.
    """

    agent_id: str
    target_id: str
    model_id: str
    stamp_ns: int
    frame_id: str
    modalities: tuple
    modality_stamps_ns: tuple
    modality_sources: tuple
    contributors: tuple
    mean: np.ndarray
    log_variance: np.ndarray
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class BeliefOutput:
    """What a ClassBelief message carries: the class-belief head's probabilities float32 (C,) for ``latent``."""

    latent: LatentOutput
    class_names: tuple
    probabilities: np.ndarray
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Outputs:
    """The result of a fused input: publish ``latent`` (and ``belief`` when the bundle has a head) on the agent's
    own topics, and ``shared`` on the shared topic now (None: nothing to share now; a throttled one is waiting)."""

    latent: LatentOutput
    belief: Optional[BeliefOutput]
    shared: Optional[LatentOutput]


#: A peer's latent: the content of a LatentEmbedding message (:class:`m2vae_fusion.core.messages.LatentData`, the
#: same record the conversions produce); validated against the bundle by :meth:`Agent.merge` (sizes, finite
#: values, known distinct modalities in bundle order). Any object with these attributes is accepted.
PeerLatent = LatentData


class Agent:
    """One agent's fusion policy (see the module docstring).

    Args:
        engine: the fusion engine of the agent's bundle.
        config: :class:`AgentConfig`; the modalities must be in the bundle.
        clock: monotonic clock (s) for share throttling and the belief store's time-to-live.
        count: ``count(key, n=1)`` for counters (default: :attr:`counts`, a ``collections.Counter``).

    Raises:
        ValueError: a modality not in the bundle, or ``max_targets`` / ``target_history`` < 1.
    """

    def __init__(self, engine: FusionEngine, config: AgentConfig, clock: Callable[[], float] = time.monotonic,
                 count: Callable[..., None] | None = None):
        bad = [m for m in config.modalities if m not in engine.order]
        if bad:
            raise ValueError(f"modalities {bad} are not in the bundle's modalities {list(engine.order)}")
        if config.target_history < 1:
            raise ValueError("target_history must be at least 1")
        self.engine = engine
        self.bundle = engine.bundle
        self.config = config
        self.clock = clock
        self.counts: Counter = Counter()
        self._count = count or self._own_count
        self.store = BeliefStore(ttl_s=config.belief_ttl, max_targets=config.max_targets, clock=clock)
        self.cfg = {m: self.bundle.input_config(m) for m in self.bundle.modalities}
        self._lock = threading.RLock()            # engine + store + own-newest
        self._targets: deque = deque(maxlen=config.target_history)
        self._targets_lock = threading.Lock()
        self._own_newest: dict = {}               # modality → stamp (s) of this agent's newest fused observation
        self._share_lock = threading.Lock()
        self._share_last: dict = {}               # target → clock() of its last shared latent
        self._share_pending: dict = {}            # target → newest LatentOutput waiting for its turn

    def _own_count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    @property
    def agent_id(self) -> str:
        return self.config.agent_id

    # -- configuration ------------------------------------------------------------------------------------------
    def reconfigure(self, **changes) -> AgentConfig:
        """Change runtime-safe parameters (:attr:`AgentConfig.RUNTIME`) of the running agent.

        Raises:
            ValueError: a field that cannot change at runtime, or an unknown field.
        """
        bad = sorted(set(changes).difference(AgentConfig.RUNTIME))
        if bad:
            raise ValueError(f"cannot change {bad} while running (runtime-safe: {list(AgentConfig.RUNTIME)})")
        if "trusted" in changes:
            changes["trusted"] = frozenset(a for a in changes["trusted"] if a)
        with self._lock:
            self.config = replace(self.config, **changes)
            ttl = self.config.belief_ttl
            self.store.ttl_s = ttl if ttl and ttl > 0 else math.inf
        return self.config

    # -- target timeline --------------------------------------------------------------------------------------
    def on_target(self, stamp: float, target_id: str, frame_id: str = "", position=None) -> bool:
        """Record a TargetOfInterest announcement (``stamp`` s). Returns False for a repeat (publishers repeat the
        current target), True when it was new."""
        entry = Target(float(stamp), str(target_id), str(frame_id), tuple(position) if position is not None else None)
        with self._targets_lock:
            if entry in self._targets:
                return False
            self._targets.append(entry)
            if len(self._targets) > 1 and self._targets[-2].stamp > entry.stamp:  # keep the timeline sorted
                items = sorted(self._targets, key=lambda e: e.stamp)
                self._targets.clear()
                self._targets.extend(items)
        return True

    def target_at(self, stamp: float) -> Target | None:
        """The announcement in force at ``stamp`` (the newest stamped at or before it), None when there is none or
        its target id is empty."""
        with self._targets_lock:
            for t in reversed(self._targets):
                if t.stamp <= stamp:
                    return t if t.target_id else None
        return None

    @property
    def current_target(self) -> str:
        """Target id of the newest announcement ('' when none)."""
        with self._targets_lock:
            return self._targets[-1].target_id if self._targets else ""

    # -- checks -----------------------------------------------------------------------------------------------
    def check_stamp(self, stamp: float, max_age: float, now_s: float) -> None:
        """Raise :class:`Drop` (STALE / FUTURE) unless ``now_s − max_age ≤ stamp ≤ now_s + future_tolerance``
        (``max_age`` ≤ 0: no age limit)."""
        if max_age > 0 and now_s - stamp > max_age:
            raise Drop(DropReason.STALE, f"stamped {now_s - stamp:.3f} s ago (limit {max_age} s)")
        if stamp - now_s > self.config.future_tolerance:
            raise Drop(DropReason.FUTURE, f"stamped {stamp - now_s:.3f} s in the future")

    def is_own(self, agent_id: str) -> bool:
        """True for a latent this agent published itself (ignored before any work)."""
        return agent_id == self.config.agent_id

    def screen_peer(self, agent_id: str, model_id: str, format_version: int) -> None:
        """Cheap checks of a peer latent's header fields, before it is decoded.

        Raises:
            Drop: FORMAT_VERSION (unknown message format), UNTRUSTED (sender not trusted), MODEL_ID (another
                latent space).
        """
        if int(format_version) not in ACCEPTED_FORMAT_VERSIONS:
            raise Drop(DropReason.FORMAT_VERSION, f"latent from {agent_id!r} has format_version {format_version}; "
                                                  f"this agent reads {sorted(ACCEPTED_FORMAT_VERSIONS)}")
        trusted = self.config.trusted
        if trusted and agent_id not in trusted:
            raise Drop(DropReason.UNTRUSTED, f"latent from untrusted agent {agent_id!r}")
        if model_id != self.bundle.model_id:
            raise Drop(DropReason.MODEL_ID, f"latent from {agent_id!r} has model_id {model_id!r}, "
                                            f"this agent uses {self.bundle.model_id!r}")

    # -- observations -----------------------------------------------------------------------------------------
    def admit(self, modality: str, stamp: float, now_s: float) -> Target | None:
        """Stamp check and target look-up of an observation before it is converted (cheap).

        Returns:
            the target announcement in force at ``stamp``, or None between targets (counted as
            ``no_target.<modality>``, not a drop).

        Raises:
            Drop: STALE / FUTURE.
        """
        self.check_stamp(stamp, self.config.max_message_age, now_s)
        target = self.target_at(stamp)
        if target is None:
            self._count(f"no_target.{modality}")
        return target

    def crop_position(self, target: Target) -> tuple | None:
        """The target's position for the target-centred crop (base frame, m): the announcement's ``position`` when
        it has one in ``base_frame`` (or with an empty frame id), else None (the preprocessing's documented
        fallback: salient blob / nearest return; no tf here)."""
        if target.position is None or target.frame_id not in ("", self.config.base_frame):
            return None
        return target.position

    def observe(self, modality: str, stamp: float, raw, target: Target, camera_k=None) -> Outputs:
        """Preprocess, encode and fuse one observation (FUSION 2019, Eq. 18) into the belief about ``target``.

        Args:
            modality: one of the agent's modalities.
            stamp: observation time (s).
            raw: the modality's raw numpy input (camera uint8 (H, W, 3) RGB, lidar float32 (beams,) ranges,
                reflectance float32 (2·beams,)), or a zero-argument callable returning it (its exceptions with a
                ``reason`` become that drop reason).
            target: from :meth:`admit`; its position (:meth:`crop_position`) centres the crop of a bundle whose
                preprocessing enables one.
            camera_k: the camera's intrinsics (9 numbers, ``sensor_msgs/CameraInfo.k`` of this image) for the crop;
                None: the bundle config's ``K``.

        Returns:
            :class:`Outputs` of the new belief.

        Raises:
            Drop: the raw reader's reason, PREPROCESS, NON_FINITE (encoder output), STALE (older than the slot
                held), FUSION.
        """
        try:
            x = raw() if callable(raw) else raw
        except Exception as exc:
            if getattr(exc, "reason", None) is None:
                raise
            raise drop_from(exc) from None
        try:
            pos = self.crop_position(target)
            if pos is None and crop_config(self.cfg[modality]):
                self._count(f"crop_fallback.{modality}")
            x = preprocess(modality, x, self.cfg[modality], target_position=pos,
                           camera_k=camera_k if modality == "camera" else None)
        except PreprocessError as exc:
            raise Drop(DropReason.PREPROCESS, str(exc)) from None
        feature, _ = self.bundle.encode_feature(modality, x)
        if not np.all(np.isfinite(feature)):
            raise Drop(DropReason.NON_FINITE, "the encoder returned non-finite features")
        with self._lock:
            try:
                belief = self.engine.observe(self.store.get(target.target_id), target.target_id, modality,
                                             feature[0], stamp, self.config.agent_id)
            except FusionError as exc:
                raise drop_from(exc, DropReason.FUSION) from None
            self.store.put(belief)
            self._own_newest[modality] = max(stamp, self._own_newest.get(modality, -math.inf))
            return self._outputs(belief, target.frame_id, share=True)

    # -- peers ------------------------------------------------------------------------------------------------
    def merge(self, peer, now_s: float) -> Outputs | None:
        """Merge a peer's latent (after :meth:`screen_peer` and decoding) into the belief about its target.

        Args:
            peer: a :class:`PeerLatent` (or an object with its attributes).
            now_s: the host's clock (s) for the age check.

        Returns:
            :class:`Outputs`, or None when the latent adds no evidence (no slot newer than the one held; counted as
            ``redundant.peer``, nothing to publish).

        Raises:
            Drop: UNTRUSTED (relays evidence of an agent not trusted), SPOOFED (claims evidence of this agent newer
                than it observed), STALE / FUTURE (newest slot), FUSION.
        """
        me = self.config.agent_id
        trusted = self.config.trusted
        if trusted:  # evidence relayed by a trusted agent must come from trusted agents too
            others = sorted({*peer.modality_sources, *peer.contributors} - trusted - {me})
            if others:
                raise Drop(DropReason.UNTRUSTED,
                           f"latent from {peer.agent_id!r} holds evidence of untrusted agents {others}")
        stamps = [ns_to_s(s) for s in peer.modality_stamps_ns]
        with self._lock:
            for m, s, src in zip(peer.modalities, stamps, peer.modality_sources):
                if src == me and s > self._own_newest.get(m, -math.inf):
                    raise Drop(DropReason.SPOOFED, f"latent from {peer.agent_id!r} claims {m} evidence of this "
                                                   "agent that it never observed")
        if not stamps:
            raise Drop(DropReason.EMPTY, f"latent from {peer.agent_id!r} names no modalities")
        self.check_stamp(max(stamps), self.config.latent_age_limit, now_s)  # newest slot: not stale, not future
        slots = {m: Slot(s, src or peer.agent_id) for m, s, src in
                 zip(peer.modalities, stamps, peer.modality_sources)}
        with self._lock:
            own = self.store.get(peer.target_id)
            if own is not None and not any(m not in own.slots or s.stamp > own.slots[m].stamp
                                           for m, s in slots.items()):
                self._count("redundant.peer")  # adds no evidence: no decoding, nothing published
                return None
            belief_in = Belief(peer.target_id, peer.mean, peer.log_variance, slots, self.clock())
            try:
                belief, changed = self.engine.merge(own, belief_in)
            except FusionError as exc:
                raise drop_from(exc, DropReason.FUSION, f"latent from {peer.agent_id!r}: ") from None
            if not changed:
                self._count("redundant.peer")
                return None
            self.store.put(belief)
            # tell the others only when the merged belief holds something the sender's latent does not
            news = any(belief.slots[m] != slots.get(m) for m in belief.slots)
            return self._outputs(belief, peer.frame_id, share=news)

    # -- outputs and sharing ----------------------------------------------------------------------------------
    def latent_output(self, belief: Belief, frame_id: str) -> LatentOutput:
        """The LatentEmbedding content of ``belief`` (stamp = its newest evidence)."""
        mods = belief.modalities(self.bundle.modalities)
        return LatentOutput(
            agent_id=self.config.agent_id, target_id=belief.target_id, model_id=self.bundle.model_id,
            stamp_ns=s_to_ns(belief.stamp), frame_id=self.config.output_frame_id or frame_id, modalities=mods,
            modality_stamps_ns=tuple(s_to_ns(belief.slots[m].stamp) for m in mods),
            modality_sources=tuple(belief.slots[m].agent for m in mods), contributors=belief.contributors,
            mean=belief.mean, log_variance=belief.log_variance)

    def _outputs(self, belief: Belief, frame_id: str, share: bool) -> Outputs:
        latent = self.latent_output(belief, frame_id)
        probs = self.engine.classify(belief)
        out_belief = (BeliefOutput(latent, tuple(self.bundle.class_names), probs) if probs is not None else None)
        shared = self._share(latent) if share and self.config.share else None
        return Outputs(latent, out_belief, shared)

    def _share(self, latent: LatentOutput) -> LatentOutput | None:
        """``latent`` when its target's last shared latent is at least one period old (send it now), else None
        (it waits, replacing an older waiting one, until :meth:`due_shares`)."""
        now = self.clock()
        period = self.config.share_period
        tid = latent.target_id
        with self._share_lock:
            if now - self._share_last.get(tid, -math.inf) >= period:
                self._share_last[tid] = now
                self._share_pending.pop(tid, None)
                self._count("shared.sent")
                return latent
            if tid in self._share_pending:
                self._count("shared.coalesced")
            self._share_pending[tid] = latent
            return None

    def due_shares(self) -> list:
        """The waiting shared latents whose period has passed (removed from the queue and counted as sent)."""
        now = self.clock()
        period = self.config.share_period
        out = []
        with self._share_lock:
            for tid in [t for t in self._share_pending if now - self._share_last.get(t, -math.inf) >= period]:
                self._share_last[tid] = now
                out.append(self._share_pending.pop(tid))
        if out:
            self._count("shared.sent", len(out))
        return out

    def next_share_due(self) -> float | None:
        """Seconds from now until the earliest waiting shared latent is due (≥ 0), None when none waits."""
        now = self.clock()
        period = self.config.share_period
        with self._share_lock:
            if not self._share_pending:
                return None
            return max(0.0, min(self._share_last.get(t, -math.inf) + period for t in self._share_pending) - now)

    # -- maintenance ------------------------------------------------------------------------------------------
    def reset(self) -> int:
        """Forget every belief and waiting shared latent; returns how many beliefs there were."""
        with self._lock:
            n = self.store.clear()
        with self._share_lock:
            self._share_pending.clear()
        return n

    def expire(self) -> list:
        """Drop beliefs older than the time-to-live; returns their target ids."""
        with self._lock:
            return self.store.expire()

    def store_stats(self) -> dict:
        """``beliefs``, ``beliefs.expired``, ``beliefs.evicted`` counters of the store."""
        with self._lock:
            return {"beliefs": len(self.store), "beliefs.expired": self.store.expired,
                    "beliefs.evicted": self.store.evicted}

    def own_newest(self) -> dict:
        """modality → stamp (s) of this agent's newest fused observation."""
        with self._lock:
            return dict(self._own_newest)


def peer_from_latent(latent: LatentOutput) -> PeerLatent:
    """A :class:`LatentOutput` seen from the receiving side (for tests, the benchmarks and in-process exchange)."""
    return PeerLatent(latent.agent_id, latent.target_id, latent.model_id, latent.stamp_ns, tuple(latent.modalities),
                      tuple(latent.modality_stamps_ns), tuple(latent.modality_sources), tuple(latent.contributors),
                      np.asarray(latent.mean, np.float32), np.asarray(latent.log_variance, np.float32),
                      latent.frame_id)


__all__ = ["ACCEPTED_FORMAT_VERSIONS", "Agent", "AgentConfig", "BeliefOutput", "Drop", "FORMAT_VERSION",
           "LatentOutput", "Outputs", "PeerLatent", "Target", "drop_from", "ns_to_s", "peer_from_latent",
           "s_to_ns"]
