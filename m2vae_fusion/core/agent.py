"""One agent's fusion policy as plain Python (no rclpy, no torch): the part of the fusion node that decides.

An :class:`Agent` owns one :class:`~m2vae_fusion.core.fusion.FusionEngine` and one
:class:`~m2vae_fusion.core.fusion.BeliefStore` and applies the agent's rules around them:

- the **target timeline**: TargetOfInterest announcements (stamp → target id); an observation is fused into the
  belief about the target announced last at or before its stamp (an empty id means "no target");
- **stamp checks**: too old (``max_message_age`` / ``max_latent_age``) or too far in the future
  (``future_tolerance``);
- **trust and provenance**: peer latents from agents outside ``trusted`` are refused, also when they relay evidence
  of such agents; a latent claiming evidence of this agent newer than anything this agent observed is spoofed;
- **restart identity** (message format 3): every agent process has an ``incarnation`` (its start stamp, int ns, in
  the stamps' time base); each slot carries its source's incarnation. Own evidence of an earlier incarnation that is
  stamped before this process started is accepted from relays (an agent restarted under the same id gets its
  pre-crash evidence back, no false ``spoofed``); evidence claimed for the current incarnation must not be newer than
  what this process observed, and evidence claimed for a later incarnation, or for an earlier one but stamped after
  this start, is spoofed (:meth:`Agent.check_provenance`). These are consistency checks among cooperating agents,
  not authentication (README, "Reliability and threat model");
- **late joiners**: :meth:`Agent.note_peer` tells when a peer appears (a new agent id or a new incarnation), and
  :meth:`Agent.resync` queues every held belief to share now, so a new or restarted peer gets the current
  beliefs without waiting for a change;
- **peer-evidence age**: how stale this agent's copy of a peer's evidence about the target both observe is while
  the peer keeps observing it: at every own observation admitted for a target, for each peer whose evidence about
  that target the agent holds, now minus the stamp of the newest evidence of that peer about it held. A sample
  counts once the peer is known to have observed the target without a pause longer than :data:`PEER_AGE_GAP` s from
  that held stamp up to the sample (its evidence stamps, from the slots and contribution lists of any latent, also
  ones received later); otherwise (the peer was elsewhere) it is discarded after :data:`PEER_AGE_HORIZON` s and
  counted (:meth:`Agent.peer_evidence_age`, :meth:`Agent.peer_evidence_stats`);
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
from bisect import bisect_right
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from m2vae_fusion.core.messages import LatentData
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.core.fusion import (CLASS_BELIEFS, Accumulation, Belief, BeliefStore, FusionEngine, FusionError,
                                     Slot)
from m2vae_fusion.core.preprocess import PreprocessError, crop_config, preprocess
from m2vae_fusion.core.reasons import DropReason

#: Version of the LatentEmbedding / ClassBelief message format this agent writes and accepts (docs/formats.md).
FORMAT_VERSION = 4
#: Versions a receiver accepts: format 2 (incarnations unknown = 0; no per-contribution provenance: each slot counts
#: as the one observation its stamp and source name), format 3 (no class evidence per slot: a slot counts as one
#: view of its feature) and format 4.
ACCEPTED_FORMAT_VERSIONS = frozenset({2, 3, FORMAT_VERSION})
#: How many peer-evidence age samples :meth:`Agent.peer_evidence_stats` summarises.
PEER_AGE_WINDOW = 1000
#: s: a peer observes a target continuously while its evidence stamps about it are at most this far apart (its sensors
#: run at 10-15 Hz); a longer pause means it was elsewhere, and the staleness of a copy then is not the link's
PEER_AGE_GAP = 0.5
#: s: an age sample whose peer is not known to have observed the target continuously within this long is discarded
PEER_AGE_HORIZON = 5.0
#: (peer, target) pairs whose evidence stamps are remembered for the age (least recently used forgotten), and stamps
#: remembered per pair (newest; 128 cover 6 s of a peer with two 10 Hz sensors)
PEER_AGE_KEYS = 256
PEER_AGE_STAMPS = 128


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
    #: evidence accumulation (:class:`~m2vae_fusion.core.fusion.Accumulation`): forgetting factor λ in [0, 1]
    #: (0: each observation replaces its slot), outlier gate, outliers that confirm a change and the seconds their
    #: run must span
    forgetting_factor: float = 0.99
    outlier_gate: float = 1.25
    change_confirmations: int = 4
    change_confirm_time: float = 2.0
    #: class evidence (:class:`~m2vae_fusion.core.fusion.Accumulation`): s within which frames count as one view
    view_time: float = 2.0
    #: class evidence: nats by which a new object must explain an observation better than the held class belief for
    #: it to support a change (:class:`~m2vae_fusion.core.fusion.Accumulation`)
    class_change_margin: float = 0.5
    #: class evidence: dissenting observations a run of change supports survives (:class:`~m2vae_fusion.core.fusion.
    #: Accumulation` ``tolerance``)
    change_tolerance: int = 1
    #: class belief published: "evidence" (product of the slots' accumulated unimodal class posteriors, the default)
    #: or "latent" (the class-belief head on the fused latent, FUSION 2019; README "Beliefs that accumulate evidence")
    class_belief: str = "evidence"
    #: novelty threshold (:mod:`m2vae_fusion.core.novelty`): 0: the bundle's calibrated one; < 0: off
    novelty_threshold: float = 0.0
    #: frame of TargetOfInterest positions the crop uses (positions in another frame: the preprocessing fallback)
    base_frame: str = "base_link"

    #: fields that may change while the agent runs (:meth:`Agent.reconfigure`)
    RUNTIME = ("trusted", "belief_ttl", "max_message_age", "max_latent_age", "future_tolerance",
               "shared_latent_rate", "output_frame_id", "forgetting_factor", "outlier_gate",
               "change_confirmations", "change_confirm_time", "novelty_threshold", "view_time", "class_belief",
               "class_change_margin", "change_tolerance")

    @property
    def accumulation(self) -> Accumulation:
        """The engine's accumulation settings (raises ValueError when out of range)."""
        return Accumulation(float(self.forgetting_factor), float(self.outlier_gate), int(self.change_confirmations),
                            confirm_time=float(self.change_confirm_time), view_time=float(self.view_time),
                            class_margin=float(self.class_change_margin), tolerance=self.change_tolerance)

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


class TargetTimeline:
    """One agent's target timeline: the newest ``history`` TargetOfInterest announcements, sorted by stamp.

    Used by :class:`Agent` and, without a node or a bundle, by the bag extraction (:mod:`m2vae_fusion.data.from_bag`),
    so both assign an observation to the same target. Thread-safe.

    Raises:
        ValueError: ``history`` < 1.
    """

    def __init__(self, history: int = 64):
        if int(history) < 1:
            raise ValueError("target_history must be at least 1")
        self._targets: deque = deque(maxlen=int(history))
        self._lock = threading.Lock()

    def add(self, stamp: float, target_id: str, frame_id: str = "", position=None) -> bool:
        """Record an announcement (``stamp`` s; ``position`` (x, y, z) m in ``frame_id`` or None). Returns False for
        a repeat (publishers repeat the current target), True when it was new."""
        entry = Target(float(stamp), str(target_id), str(frame_id), tuple(position) if position is not None else None)
        with self._lock:
            if entry in self._targets:
                return False
            self._targets.append(entry)
            if len(self._targets) > 1 and self._targets[-2].stamp > entry.stamp:  # keep the timeline sorted
                items = sorted(self._targets, key=lambda e: e.stamp)
                self._targets.clear()
                self._targets.extend(items)
        return True

    def at(self, stamp: float) -> Target | None:
        """The announcement in force at ``stamp`` (the newest stamped at or before it), None when there is none or
        its target id is empty."""
        with self._lock:
            for t in reversed(self._targets):
                if t.stamp <= stamp:
                    return t if t.target_id else None
        return None

    def entries(self) -> tuple:
        """The remembered announcements, oldest stamp first."""
        with self._lock:
            return tuple(self._targets)

    @property
    def current(self) -> str:
        """Target id of the newest announcement ('' when none)."""
        with self._lock:
            return self._targets[-1].target_id if self._targets else ""

    def frame_of(self, target_id: str) -> str:
        """Frame of the newest announcement of ``target_id`` ('' when none is remembered)."""
        with self._lock:
            for t in reversed(self._targets):
                if t.target_id == target_id:
                    return t.frame_id
        return ""


def check_stamp(stamp: float, max_age: float, now_s: float, future_tolerance: float) -> None:
    """Raise :class:`Drop` (STALE / FUTURE) unless ``now_s − max_age ≤ stamp ≤ now_s + future_tolerance``
    (seconds; ``max_age`` ≤ 0: no age limit)."""
    if max_age > 0 and now_s - stamp > max_age:
        raise Drop(DropReason.STALE, f"stamped {now_s - stamp:.3f} s ago (limit {max_age} s)")
    if stamp - now_s > future_tolerance:
        raise Drop(DropReason.FUTURE, f"stamped {stamp - now_s:.3f} s in the future")


def admit_observation(timeline: TargetTimeline, stamp: float, now_s: float, config: AgentConfig) -> Target | None:
    """An observation's stamp check (``config.max_message_age``, ``config.future_tolerance``) and target look-up:
    the announcement in force at ``stamp`` (s), None between targets. ``now_s``: the receive time (s, the stamps'
    time base). Raises :class:`Drop` STALE / FUTURE. The policy of :meth:`Agent.admit` and of the bag extraction."""
    check_stamp(stamp, config.max_message_age, now_s, config.future_tolerance)
    return timeline.at(stamp)


def crop_position(target: Target, base_frame: str = "base_link") -> tuple | None:
    """The target's position for the target-centred crop (base frame, m): the announcement's ``position`` when it has
    one in ``base_frame`` (or with an empty frame id), else None (the preprocessing's documented fallback: salient
    blob / nearest return; no tf here)."""
    if target.position is None or target.frame_id not in ("", base_frame):
        return None
    return target.position


def _class_belief(value: str) -> str:
    if value not in CLASS_BELIEFS:
        raise ValueError(f"class_belief must be one of {list(CLASS_BELIEFS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class LatentOutput:
    """What a LatentEmbedding message carries (format 3, docs/formats.md). Stamps are integer ns.

    ``mean`` / ``log_variance``: float32 (Dz,). Per-slot tuples have the length and order of ``modalities``.
    ``incarnation``: the publisher's process start stamp (int ns); ``modality_source_incarnations``: per slot, the
    source's (0: unknown).
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
    incarnation: int = 0
    modality_source_incarnations: tuple = ()
    #: format 3, provenance per contribution (parallel tuples, slot order, oldest first within a slot)
    contribution_modalities: tuple = ()
    contribution_sources: tuple = ()
    contribution_stamps_ns: tuple = ()
    #: format 3: float32 (len(modalities), D*) accumulated β-VAE feature and precision per slot (rows of slots
    #: known only through a latent are NaN), or None
    slot_features: Optional[np.ndarray] = None
    slot_precisions: Optional[np.ndarray] = None
    #: format 4: float32 (len(modalities), C) class evidence per slot (rows of slots without: NaN), or None
    slot_class_evidence: Optional[np.ndarray] = None


@dataclass(frozen=True)
class BeliefOutput:
    """What a ClassBelief message carries: the class-belief head's probabilities float32 (C,) for ``latent``;
    ``novelty``: the novelty score of the observation that produced it (−1: none, e.g. a merge or an uncalibrated
    bundle), ``novelty_threshold`` the threshold in force (−1: off)."""

    latent: LatentOutput
    class_names: tuple
    probabilities: np.ndarray
    format_version: int = FORMAT_VERSION
    novelty: float = -1.0
    novelty_threshold: float = -1.0
    #: format 4: "evidence" or "latent" (how ``probabilities`` were computed, :data:`CLASS_BELIEFS`)
    class_belief: str = "latent"


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
        incarnation: this process's start stamp (int ns > 0, same time base as the stamps, e.g. the ROS clock at
            start-up); None: the wall clock now (``time.time_ns()``). A restarted agent must get a larger value than
            its earlier process had.

    Raises:
        ValueError: a modality not in the bundle, or ``max_targets`` / ``target_history`` < 1.
    """

    def __init__(self, engine: FusionEngine, config: AgentConfig, clock: Callable[[], float] = time.monotonic,
                 count: Callable[..., None] | None = None, incarnation: int | None = None):
        bad = [m for m in config.modalities if m not in engine.order]
        if bad:
            raise ValueError(f"modalities {bad} are not in the bundle's modalities {list(engine.order)}")
        incarnation = time.time_ns() if incarnation is None else int(incarnation)
        if incarnation <= 0:
            raise ValueError(f"incarnation must be a positive start stamp in ns, got {incarnation}")
        self.incarnation = incarnation
        self.start_s = ns_to_s(incarnation)
        self.engine = engine
        self.bundle = engine.bundle
        self.config = config
        engine.accumulation = config.accumulation
        engine.class_belief = _class_belief(config.class_belief)
        #: modality → novelty score of its newest scored observation (fused or not)
        self.novelty_last: dict = {}
        self.clock = clock
        self.counts: Counter = Counter()
        self._count = count or self._own_count
        self.store = BeliefStore(ttl_s=config.belief_ttl, max_targets=config.max_targets, clock=clock)
        self.cfg = {m: self.bundle.input_config(m) for m in self.bundle.modalities}
        self._lock = threading.RLock()            # engine + store + own-newest
        self.timeline = TargetTimeline(config.target_history)
        self._own_newest: dict = {}               # modality → stamp (s) of this agent's newest fused observation
        self._share_lock = threading.Lock()
        self._share_last: dict = {}               # target → clock() of its last shared latent
        self._share_pending: dict = {}            # target → newest LatentOutput waiting for its turn
        self._peers: dict = {}                    # peer agent id → newest incarnation seen
        self._age_lock = threading.Lock()         # the peer-evidence age state below
        self._peer_stamps: OrderedDict = OrderedDict()  # (peer, target) → sorted stamps (s) of its evidence held
        self._age_pending: deque = deque()        # (t, peer, target, held stamp) samples not confirmed, t ascending
        self._peer_ages: deque = deque(maxlen=PEER_AGE_WINDOW)  # confirmed age samples, s
        self._age_discarded = 0                   # samples discarded: the peer did not observe the target then

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
            new = replace(self.config, **changes)
            self.engine.accumulation = new.accumulation
            self.engine.class_belief = _class_belief(new.class_belief)
            self.config = new
            ttl = self.config.belief_ttl
            self.store.ttl_s = ttl if ttl and ttl > 0 else math.inf
        return self.config

    # -- target timeline --------------------------------------------------------------------------------------
    def on_target(self, stamp: float, target_id: str, frame_id: str = "", position=None) -> bool:
        """Record a TargetOfInterest announcement (``stamp`` s). Returns False for a repeat (publishers repeat the
        current target), True when it was new (:meth:`TargetTimeline.add`)."""
        return self.timeline.add(stamp, target_id, frame_id, position)

    def target_at(self, stamp: float) -> Target | None:
        """The announcement in force at ``stamp`` (the newest stamped at or before it), None when there is none or
        its target id is empty."""
        return self.timeline.at(stamp)

    @property
    def current_target(self) -> str:
        """Target id of the newest announcement ('' when none)."""
        return self.timeline.current

    # -- checks -----------------------------------------------------------------------------------------------
    def check_stamp(self, stamp: float, max_age: float, now_s: float) -> None:
        """Raise :class:`Drop` (STALE / FUTURE) unless ``now_s − max_age ≤ stamp ≤ now_s + future_tolerance``
        (``max_age`` ≤ 0: no age limit; :func:`check_stamp`)."""
        check_stamp(stamp, max_age, now_s, self.config.future_tolerance)

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
        target = admit_observation(self.timeline, stamp, now_s, self.config)
        if target is None:
            self._count(f"no_target.{modality}")
        else:
            self._sample_peer_age(target.target_id, now_s)
        return target

    def crop_position(self, target: Target) -> tuple | None:
        """The target's position for the target-centred crop (base frame, m): the announcement's ``position`` when
        it has one in ``base_frame`` (or with an empty frame id), else None (the preprocessing's documented
        fallback: salient blob / nearest return; no tf here; :func:`crop_position`)."""
        return crop_position(target, self.config.base_frame)

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
            Drop: the raw reader's reason, PREPROCESS, NON_FINITE (encoder output), NOVEL (novelty score beyond the
                threshold: not fused), OUTLIER (held back by evidence accumulation), STALE (older than the slot held),
                FUSION.
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
        feature, logvar = self.bundle.encode_feature(modality, x)
        if not (np.all(np.isfinite(feature)) and np.all(np.isfinite(logvar))):
            raise Drop(DropReason.NON_FINITE, "the encoder returned non-finite features")
        score = self.novelty_score(modality, x, feature, logvar)
        threshold = self.novelty_threshold
        if score is not None and threshold > 0 and not score <= threshold:
            raise Drop(DropReason.NOVEL, f"{modality} observation is novel (score {score:.3g} > threshold "
                                         f"{threshold:.3g}): not fused")
        with self._lock:
            try:
                belief = self.engine.observe(self.store.get(target.target_id), target.target_id, modality,
                                             feature[0], stamp, self.config.agent_id, log_variance=logvar[0])
            except FusionError as exc:
                raise drop_from(exc, DropReason.FUSION) from None
            belief.slots[modality] = replace(belief.slots[modality], incarnation=self.incarnation)
            self.store.put(belief)
            if belief.held_back:  # the slot remembers it (a change needs several); the belief did not change
                raise Drop(DropReason.OUTLIER, f"{modality} observation held back: far from the evidence its slot "
                                               "holds (accumulation)")
            self._own_newest[modality] = max(stamp, self._own_newest.get(modality, -math.inf))
            return self._outputs(belief, target.frame_id, share=True, novelty=-1.0 if score is None else score)

    @property
    def novelty_threshold(self) -> float:
        """The novelty threshold in force: the config's, or the bundle's calibrated one for 0; ≤ 0 when off."""
        t = self.config.novelty_threshold
        return self.bundle.novelty.threshold if t == 0 else t

    def novelty_score(self, modality: str, x, feature, log_variance) -> float | None:
        """Novelty score (:mod:`m2vae_fusion.core.novelty`) of one preprocessed observation ``x`` (1, *shape) with
        β-VAE posterior ``feature`` / ``log_variance`` (1, D*); None for an uncalibrated modality or when novelty is
        off. The β-VAE decoder runs only when the bundle calibrated ``reconstruction_error``. Remembered in
        :attr:`novelty_last`."""
        nov = self.bundle.novelty
        if self.config.novelty_threshold < 0 or not nov.has(modality):
            return None
        score = float(nov.score_observation(modality, x, feature, log_variance,
                                            lambda f: self.bundle.decode_feature(modality, f))[0])
        self.novelty_last[modality] = score
        return score

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
            Drop: UNTRUSTED (relays evidence of an agent not trusted), SPOOFED (claims evidence of this agent that
                it cannot have produced, :meth:`check_provenance`), STALE / FUTURE (newest slot), FUSION.
        """
        me = self.config.agent_id
        trusted = self.config.trusted
        if trusted:  # evidence relayed by a trusted agent must come from trusted agents too
            others = sorted({*peer.modality_sources, *peer.contributors,
                             *getattr(peer, "contribution_sources", ())} - trusted - {me})
            if others:
                raise Drop(DropReason.UNTRUSTED,
                           f"latent from {peer.agent_id!r} holds evidence of untrusted agents {others}")
        stamps = [ns_to_s(s) for s in peer.modality_stamps_ns]
        incs = tuple(getattr(peer, "modality_source_incarnations", ()) or ()) or (0,) * len(stamps)
        with self._lock:
            for m, s, src, inc in zip(peer.modalities, stamps, peer.modality_sources, incs):
                if src == me:
                    self.check_provenance(m, s, int(inc), peer.agent_id)
            # the other contributions carry no incarnation: checked as unknown (0), i.e. own evidence stamped before
            # this process started, or not newer than what it observed (the slot's newest one was checked above)
            newest = set(zip(peer.modalities, stamps, peer.modality_sources))
            for m, s, src in zip(getattr(peer, "contribution_modalities", ()),
                                 map(ns_to_s, getattr(peer, "contribution_stamps_ns", ())),
                                 getattr(peer, "contribution_sources", ())):
                if src == me and (m, s, src) not in newest:
                    self.check_provenance(m, s, 0, peer.agent_id)
        if not stamps:
            raise Drop(DropReason.EMPTY, f"latent from {peer.agent_id!r} names no modalities")
        self.check_stamp(max(stamps), self.config.latent_age_limit, now_s)  # newest slot: not stale, not future
        slots = peer_slots(peer, stamps, incs)
        self._learn_peer_evidence(peer.target_id, slots, now_s)
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

    def check_provenance(self, modality: str, stamp: float, incarnation: int, sender: str = "") -> None:
        """Whether a relayed slot that names this agent as its source can be this agent's evidence.

        Args:
            modality: the slot; stamp: its evidence stamp (s); incarnation: the source incarnation the slot claims
                (int ns; 0: unknown, message format 2); sender: the relaying agent (for the message).

        Accepted: the current incarnation with a stamp not newer than this process's newest own observation of the
        modality; an earlier incarnation (0 < incarnation < this one) with ``incarnation ≤ stamp <`` this
        process's start (evidence of a process that ran before this one); unknown (0) with a stamp before this
        process's start, or not newer than its newest own observation.

        Raises:
            Drop: SPOOFED otherwise (a later incarnation than this process, evidence of an earlier one stamped
                after this process started, or current-incarnation evidence this process never produced).
        """
        def spoofed(why: str) -> Drop:
            return Drop(DropReason.SPOOFED, f"latent from {sender!r} claims {modality} evidence of this agent "
                                            f"stamped {stamp:.6f} s {why}")
        me = self.incarnation
        if incarnation > me:
            raise spoofed(f"by incarnation {incarnation}, later than this process ({me})")
        if 0 < incarnation < me:
            if not ns_to_s(incarnation) <= stamp < self.start_s:
                raise spoofed(f"by the earlier incarnation {incarnation}, outside its lifetime (before this "
                              f"process started at {self.start_s:.6f} s)")
            self._count("provenance.earlier_incarnation")
            return
        if incarnation == 0 and stamp < self.start_s:
            self._count("provenance.earlier_incarnation")
            return
        with self._lock:
            if stamp > self._own_newest.get(modality, -math.inf):
                raise spoofed("that this process never observed")

    def note_peer(self, agent_id: str, incarnation: int) -> bool:
        """Record that ``agent_id`` runs as ``incarnation`` (int ns; 0: unknown, not recorded). Returns True when
        this is news, i.e. a peer not seen before or a newer incarnation of one (it started or restarted): then the
        host should share :meth:`resync`. Counted as ``peers.new`` / ``peers.restarted``."""
        if agent_id == self.config.agent_id or incarnation <= 0:
            return False
        with self._lock:
            old = self._peers.get(agent_id)
            if old is not None and incarnation <= old:
                return False
            self._peers[agent_id] = incarnation
        self._count("peers.new" if old is None else "peers.restarted")
        return True

    def peers(self) -> dict:
        """peer agent id → newest incarnation (int ns) seen."""
        with self._lock:
            return dict(self._peers)

    def held_outputs(self) -> list:
        """The :class:`Outputs` of every held belief (``shared`` None, novelty not scored: -1), for a reader of the
        agent's own topics that appeared after the belief's last change (a restarted consumer, or one that matched
        after the output was skipped for want of readers). Counted as ``republished``."""
        with self._lock:
            beliefs = [self.store.get(t) for t in self.store.targets()]
            out = [self._outputs(b, self._frame_of(b.target_id), share=False) for b in beliefs if b is not None]
        if out:
            self._count("republished", len(out))
        return out

    def resync(self, delay: float = 0.0) -> int:
        """Queue every held belief for the shared topic (for a peer that just appeared: it gets the current beliefs
        without waiting for a change). Each replaces its target's waiting shared latent and goes out through
        :meth:`due_shares` ``delay`` s from now at the earliest, and not within one share period of that target's
        last shared latent (so repeated resyncs never exceed ``shared_latent_rate``). Returns how many were queued
        (counted as ``shared.resync``); 0 when sharing is off."""
        if not self.config.share:
            return 0
        with self._lock:
            beliefs = [self.store.get(t) for t in self.store.targets()]
            out = [self.latent_output(b, self._frame_of(b.target_id)) for b in beliefs if b is not None]
        not_before = self.clock() + max(0.0, float(delay)) - self.config.share_period  # as if last shared then
        with self._share_lock:
            for lat in out:
                self._share_pending[lat.target_id] = lat
                if delay > 0:
                    self._share_last[lat.target_id] = max(self._share_last.get(lat.target_id, -math.inf),
                                                          not_before)
        if out:
            self._count("shared.resync", len(out))
        return len(out)

    def _frame_of(self, target_id: str) -> str:
        """Frame of the newest announcement of ``target_id`` ('' when none is remembered)."""
        return self.timeline.frame_of(target_id)

    # -- peer-evidence age ------------------------------------------------------------------------------------
    def peer_evidence_age(self, now_s: float, target_id: str | None = None) -> float | None:
        """Seconds from the newest peer evidence held about ``target_id`` (default: the current target, see
        :attr:`current_target`) to ``now_s``, over the peers whose evidence about it is held (the freshest copy);
        None: none held."""
        tid = self.current_target if target_id is None else target_id
        with self._age_lock:
            held = [st[-1] for (_, t), st in self._peer_stamps.items() if t == tid and st]
        return now_s - max(held) if held else None

    def _sample_peer_age(self, target_id: str, now_s: float) -> None:
        """One age sample per peer holding evidence about ``target_id``, at an own observation of it (time
        ``now_s``): confirmed at once when the held evidence is within :data:`PEER_AGE_GAP`, else pending until
        the peer's evidence is known to be continuous from the held stamp to ``now_s``
        (:meth:`_learn_peer_evidence`)."""
        with self._age_lock:
            while self._age_pending and self._age_pending[0][0] < now_s - PEER_AGE_HORIZON:
                self._age_pending.popleft()
                self._age_discarded += 1
            for (peer, t), st in self._peer_stamps.items():
                if t != target_id or not st:
                    continue
                if st[-1] >= now_s - PEER_AGE_GAP:
                    self._peer_ages.append(max(0.0, now_s - st[-1]))
                elif len(self._age_pending) < 8 * PEER_AGE_WINDOW:
                    self._age_pending.append((now_s, peer, t, st[-1]))

    @staticmethod
    def _continuous(stamps: list, held: float, t: float) -> bool:
        """Whether the sorted ``stamps`` run from ``held`` to within :data:`PEER_AGE_GAP` before ``t`` with no gap
        longer than it (the peer kept observing from its held evidence up to ``t``)."""
        i = bisect_right(stamps, t) - 1
        if i < 0 or stamps[i] < t - PEER_AGE_GAP:
            return False
        while i > 0 and stamps[i] > held:
            if stamps[i] - stamps[i - 1] > PEER_AGE_GAP:
                return False
            i -= 1
        return stamps[i] <= held

    def _learn_peer_evidence(self, target_id: str, slots: dict, now_s: float) -> None:
        """Record the evidence stamps of other agents that an accepted peer latent about ``target_id`` holds (its
        slots' newest stamps and listed contributions, whoever relays them; none later than ``now_s`` plus the
        future tolerance) and confirm the pending age samples they show the peer kept observing for."""
        me = self.config.agent_id
        latest = now_s + self.config.future_tolerance
        learned: dict = {}
        for sl in slots.values():
            for agent, stamp in sl.evidence:
                if agent and agent != me and math.isfinite(stamp) and stamp <= latest:
                    learned.setdefault(agent, set()).add(stamp)
        if not learned:
            return
        with self._age_lock:
            for agent, new in learned.items():
                key = (agent, target_id)
                st = self._peer_stamps.get(key)
                st = sorted(new) if st is None else sorted(set(st) | new)
                self._peer_stamps[key] = st[-PEER_AGE_STAMPS:]
                self._peer_stamps.move_to_end(key)
            while len(self._peer_stamps) > PEER_AGE_KEYS:
                self._peer_stamps.popitem(last=False)
            keep = deque()
            for t, agent, tid, held in self._age_pending:
                if tid == target_id and agent in learned and \
                        self._continuous(self._peer_stamps.get((agent, tid), []), held, t):
                    self._peer_ages.append(t - held)
                else:
                    keep.append((t, agent, tid, held))
            self._age_pending = keep

    def peer_evidence_stats(self, now_s: float) -> dict:
        """The peer-evidence age (module docstring) now and over the last :data:`PEER_AGE_WINDOW` confirmed samples:
        ``peer_evidence.age_s`` (now, about the current target; absent when none is held),
        ``peer_evidence.age_s.{p50,p90,p99,max}`` (s), ``peer_evidence.age_samples`` (confirmed samples in the
        window), ``peer_evidence.age_pending`` and ``peer_evidence.age_discarded`` (samples not confirmed yet /
        discarded because the peer was not observing the target then); empty before any sample."""
        age = self.peer_evidence_age(now_s)
        with self._age_lock:
            a = np.asarray(self._peer_ages, dtype=np.float64)
            pending, discarded = len(self._age_pending), self._age_discarded
        out = {} if age is None else {"peer_evidence.age_s": age}
        if a.size:
            p50, p90, p99 = np.percentile(a, [50, 90, 99])
            out.update({"peer_evidence.age_s.p50": float(p50), "peer_evidence.age_s.p90": float(p90),
                        "peer_evidence.age_s.p99": float(p99), "peer_evidence.age_s.max": float(a.max()),
                        "peer_evidence.age_samples": int(a.size), "peer_evidence.age_pending": pending,
                        "peer_evidence.age_discarded": discarded})
        return out

    # -- outputs and sharing ----------------------------------------------------------------------------------
    def latent_output(self, belief: Belief, frame_id: str) -> LatentOutput:
        """The LatentEmbedding content of ``belief`` (stamp = its newest evidence)."""
        mods = belief.modalities(self.bundle.modalities)
        contrib = [(m, a, s) for m in mods for a, s in belief.slots[m].evidence]
        held = [belief.slots[m] for m in mods]
        feats = precs = None
        if any(sl.feature is not None for sl in held):
            nan = np.full(self.bundle.feature_dim, np.nan, np.float32)
            feats = np.stack([nan if sl.feature is None else sl.feature for sl in held]).astype(np.float32)
            precs = np.stack([nan if sl.precision is None else sl.precision for sl in held]).astype(np.float32)
        evid = None
        if any(sl.class_evidence is not None for sl in held):
            nan = np.full(len(self.bundle.class_names), np.nan, np.float32)
            evid = np.stack([nan if sl.class_evidence is None else sl.class_evidence for sl in held]
                            ).astype(np.float32)
        return LatentOutput(
            slot_class_evidence=evid,
            contribution_modalities=tuple(c[0] for c in contrib), contribution_sources=tuple(c[1] for c in contrib),
            contribution_stamps_ns=tuple(s_to_ns(c[2]) for c in contrib), slot_features=feats,
            slot_precisions=precs,
            agent_id=self.config.agent_id, target_id=belief.target_id, model_id=self.bundle.model_id,
            stamp_ns=s_to_ns(belief.stamp), frame_id=self.config.output_frame_id or frame_id, modalities=mods,
            modality_stamps_ns=tuple(s_to_ns(belief.slots[m].stamp) for m in mods),
            modality_sources=tuple(belief.slots[m].agent for m in mods), contributors=belief.contributors,
            mean=belief.mean, log_variance=belief.log_variance, incarnation=self.incarnation,
            modality_source_incarnations=tuple(int(belief.slots[m].incarnation) for m in mods))

    def _outputs(self, belief: Belief, frame_id: str, share: bool, novelty: float = -1.0) -> Outputs:
        latent = self.latent_output(belief, frame_id)
        probs = self.engine.classify(belief)
        t = self.novelty_threshold
        out_belief = (BeliefOutput(latent, tuple(self.bundle.class_names), probs, novelty=float(novelty),
                                   novelty_threshold=float(t) if t > 0 and self.config.novelty_threshold >= 0 else -1.0,
                                   class_belief=self.engine.class_belief)
                      if probs is not None else None)
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
        with self._age_lock:
            self._peer_stamps.clear()
            self._age_pending.clear()
            self._peer_ages.clear()
            self._age_discarded = 0
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
                      latent.frame_id, incarnation=latent.incarnation,
                      modality_source_incarnations=tuple(latent.modality_source_incarnations),
                      contribution_modalities=tuple(latent.contribution_modalities),
                      contribution_sources=tuple(latent.contribution_sources),
                      contribution_stamps_ns=tuple(latent.contribution_stamps_ns),
                      slot_features=latent.slot_features, slot_precisions=latent.slot_precisions,
                      slot_class_evidence=latent.slot_class_evidence)


def peer_slots(peer, stamps, incarnations=()) -> dict:
    """modality → :class:`Slot` of a peer latent: newest stamp, source and source incarnation per slot
    (``incarnations`` parallel to the slots; 0 / absent: unknown), the contributions listed for it (format 3; a
    format-2 latent's slot is its one observation) and its accumulated feature / precision when the latent carries
    them (a row with a NaN: none)."""
    contrib: dict = {}
    for m, a, s in zip(getattr(peer, "contribution_modalities", ()), getattr(peer, "contribution_sources", ()),
                       getattr(peer, "contribution_stamps_ns", ())):
        contrib.setdefault(m, []).append((a, ns_to_s(s)))
    feats = getattr(peer, "slot_features", None)
    precs = getattr(peer, "slot_precisions", None)
    evid = getattr(peer, "slot_class_evidence", None)
    incs = tuple(incarnations) or (0,) * len(stamps)
    slots = {}
    for i, (m, s, src, inc) in enumerate(zip(peer.modalities, stamps, peer.modality_sources, incs)):
        f = p = None
        if feats is not None and precs is not None and i < len(feats) and i < len(precs):
            if np.isfinite(feats[i]).all() and np.isfinite(precs[i]).all():
                f, p = np.asarray(feats[i], np.float32), np.asarray(precs[i], np.float32)
        ev = None
        if evid is not None and i < len(evid) and np.isfinite(evid[i]).all():
            ev = np.asarray(evid[i], np.float32)
        slots[m] = Slot(s, src or peer.agent_id, f, p, tuple(contrib.get(m, ())), incarnation=int(inc),
                        class_evidence=ev)
    return slots


__all__ = ["ACCEPTED_FORMAT_VERSIONS", "PEER_AGE_GAP", "PEER_AGE_HORIZON", "PEER_AGE_KEYS", "PEER_AGE_STAMPS",
           "PEER_AGE_WINDOW", "Agent", "AgentConfig", "BeliefOutput", "Drop", "FORMAT_VERSION",
           "LatentOutput", "Outputs", "PeerLatent", "Target", "TargetTimeline", "admit_observation", "check_stamp",
           "crop_position", "drop_from", "ns_to_s", "peer_from_latent", "s_to_ns"]
