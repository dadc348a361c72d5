"""The fusion node: one per agent. Sensor messages → β-VAE features → in-place fusion into the belief about the
current target; peers' latents → merge; publishes the latent embedding and the class belief.

Run: ``fusion_node --ros-args -r __ns:=/agent1 --params-file config/fusion.yaml`` (or
``python -m m2vae_fusion.ros.fusion_node …``). Parameters are declared with descriptions (``ros2 param describe``).

Topics (relative names resolve in the node's namespace):

- subscribes ``camera/image_raw`` (sensor_msgs/Image), ``scan`` (sensor_msgs/LaserScan or PointCloud2, parameter
  ``lidar_type``), ``reflectance`` (sensor_msgs/LaserScan with intensities), ``target_of_interest``
  (m2vae_fusion_msgs/TargetOfInterest), the shared latent topic ``/m2vae/latents`` (m2vae_fusion_msgs/LatentEmbedding);
- publishes ``latent`` (LatentEmbedding), the shared latent topic, ``belief`` (m2vae_fusion_msgs/ClassBelief),
  ``/diagnostics`` (diagnostic_msgs/DiagnosticArray: counters, rates, latencies);
- service ``~/reset`` (std_srvs/Trigger): forget every belief.

Threads: subscription callbacks only put the newest message per input into a mailbox (sensor QoS is best-effort,
depth 1); one worker thread converts, encodes, fuses and publishes, always taking the newest message, so a slow model
never builds a backlog (overwritten messages are counted as ``superseded.*``). Stamps of outputs are the stamp of
the newest evidence. No torch here: numpy, onnxruntime and rclpy only.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import OrderedDict, deque

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding, TargetOfInterest
from sensor_msgs.msg import Image, LaserScan, PointCloud2
from std_srvs.srv import Trigger

from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.fusion import Belief, BeliefStore, FusionEngine, FusionError, Slot
from m2vae_fusion.core.preprocess import PreprocessError, preprocess
from m2vae_fusion.paths import share_path
from m2vae_fusion.core import messages as conv
from m2vae_fusion.ros.spin import run_node
from m2vae_fusion.ros.params import ConfigError, declare_parameters
from m2vae_fusion.ros.stats import NodeStats, diagnostic_array

MODEL_NAME = "amiro"
SENSORS = ("camera", "lidar", "reflectance")


# -- time: outputs carry the stamps of their evidence; beliefs hold seconds quantised to microseconds, so
#    ns → s → ns is exact and a latent echoed between agents never looks newer than the evidence it holds.
def ns_to_s(ns: int) -> float:
    return (int(ns) // 1000) / 1_000_000


def s_to_ns(s: float) -> int:
    return int(round(s * 1e6)) * 1000


def default_model_dir() -> str:
    """``share/m2vae_fusion/models/amiro`` of the installed package, else the repository's ``models/amiro``."""
    return share_path("models", MODEL_NAME)


class _Mailbox:
    """Newest message per sensor and per (peer, target); the worker takes everything pending at once."""

    def __init__(self, peer_capacity: int, stats: NodeStats):
        self.cv = threading.Condition()
        self.sensors: dict = {}
        self.peers: "OrderedDict[tuple, tuple]" = OrderedDict()
        self.capacity = max(1, peer_capacity)
        self.stats = stats
        self.closed = False

    def put_sensor(self, kind: str, msg, recv: int) -> None:
        with self.cv:
            if kind in self.sensors:
                self.stats.inc(f"superseded.{kind}")
            self.sensors[kind] = (kind, msg, recv)
            self.cv.notify()

    def put_peer(self, key: tuple, msg, recv: int) -> None:
        with self.cv:
            if self.peers.pop(key, None) is not None:
                self.stats.inc("superseded.peer")
            self.peers[key] = ("peer", msg, recv)
            while len(self.peers) > self.capacity:
                self.peers.popitem(last=False)
                self.stats.inc("superseded.peer")
            self.cv.notify()

    def take(self, timeout: float) -> list:
        with self.cv:
            self.cv.wait_for(lambda: self.closed or self.sensors or self.peers, timeout)
            items = list(self.sensors.values()) + list(self.peers.values())
            self.sensors.clear()
            self.peers.clear()
        return sorted(items, key=lambda it: it[2])

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()


class Drop(Exception):
    """An input that is not fused: ``reason`` is counted as ``dropped.<source>.<reason>``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class FusionNode(Node):
    """See the module docstring. Raises :class:`BundleError` / :class:`ConfigError` from the constructor."""

    def __init__(self, node_name: str = "fusion_node", **kwargs):
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, self.PARAMS)
        self.p = p
        self.agent_id = p["agent_id"] or self.get_namespace().strip("/").replace("/", "_") or node_name
        self.stats = NodeStats(p["latency_window"])
        if p["lidar_type"] not in ("LaserScan", "PointCloud2"):
            raise ConfigError(f"parameter lidar_type must be LaserScan or PointCloud2, got {p['lidar_type']!r}")
        for name in ("max_targets", "sensor_qos_depth", "target_history", "peer_queue", "ort_threads"):
            if p[name] < 1:
                raise ConfigError(f"parameter {name} must be at least 1, got {p[name]}")
        if p["sensor_qos_reliability"] not in ("best_effort", "reliable"):
            raise ConfigError("parameter sensor_qos_reliability must be best_effort or reliable, got "
                              f"{p['sensor_qos_reliability']!r}")

        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = [x for x in p["ort_providers"] if x] or ["CPUExecutionProvider"]
        missing = [x for x in wanted if x not in available]
        if missing:
            self.get_logger().warning(f"onnxruntime execution providers {missing} are not available here "
                                      f"(available: {available}); skipping them")
        model_dir = p["model_dir"] or default_model_dir()
        self.bundle = Bundle.load(model_dir, check_sums=p["check_sums"], threads=p["ort_threads"],
                                  providers=wanted)
        self.get_logger().info(
            f"agent {self.agent_id}: bundle {self.bundle.path} model_id {self.bundle.model_id} "
            f"(modalities {list(self.bundle.modalities)}, latent_dim {self.bundle.latent_dim}, "
            f"head {'yes' if self.bundle.has_head else 'no'}); onnxruntime {ort.__version__} providers in use "
            f"{self.bundle.providers}, {p['ort_threads']} thread(s)")
        self.modalities = [m for m in p["modalities"] if m]
        if not self.modalities:
            raise ConfigError("parameter modalities is empty: name at least one of the bundle's modalities")
        bad = [m for m in self.modalities if m not in self.bundle.modalities]
        if bad:
            raise ConfigError(f"parameter modalities: {bad} not in the bundle's modalities "
                              f"{list(self.bundle.modalities)} ({self.bundle.path})")
        self.cfg = {m: self.bundle.input_config(m) for m in self.bundle.modalities}

        self.engine = FusionEngine(self.bundle)
        self.store = BeliefStore(ttl_s=p["belief_ttl"], max_targets=p["max_targets"])
        self.trusted = {a for a in p["trusted_agents"] if a}
        self._lock = threading.RLock()  # engine + store (worker thread vs reset service / timers)
        self._targets: deque = deque(maxlen=max(1, p["target_history"]))  # (stamp_s, target_id, position)
        self._targets_lock = threading.Lock()
        self._warned: dict = {}
        self._head_warned = False
        self._own_newest: dict = {}  # modality → stamp (s) of this agent's newest fused observation
        self.mailbox = _Mailbox(p["peer_queue"], self.stats)

        sensor_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=max(1, p["sensor_qos_depth"]),
            reliability=(ReliabilityPolicy.BEST_EFFORT if p["sensor_qos_reliability"] == "best_effort"
                         else ReliabilityPolicy.RELIABLE),
            durability=DurabilityPolicy.VOLATILE)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        self.pub_latent = self.create_publisher(LatentEmbedding, p["latent_topic"], reliable)
        self.pub_shared = (self.create_publisher(LatentEmbedding, p["shared_latent_topic"], reliable)
                           if p["shared_latent_topic"] else None)
        self.pub_belief = self.create_publisher(ClassBelief, p["belief_topic"], reliable)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)

        topics = {"camera": (Image, p["camera_topic"]),
                  "lidar": (PointCloud2 if p["lidar_type"] == "PointCloud2" else LaserScan, p["lidar_topic"]),
                  "reflectance": (LaserScan, p["reflectance_topic"])}
        # the target subscription first: when it and a sensor are ready together, the executor takes it first
        self._subs = [self.create_subscription(TargetOfInterest, p["target_topic"], self._on_target,
                                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))]
        for m in self.modalities:
            mtype, topic = topics[m]
            self._subs.append(self.create_subscription(
                mtype, topic, lambda msg, m=m: self._on_sensor(m, msg), sensor_qos))
        if p["shared_latent_topic"]:
            self._subs.append(self.create_subscription(LatentEmbedding, p["shared_latent_topic"], self._on_latent,
                                                       QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))
        rate = p["shared_latent_rate"]
        self._share_period = 1.0 / rate if rate > 0 else 0.0
        self._share_last: dict = {}     # target → monotonic time of the last shared latent
        self._share_pending: dict = {}  # target → newest LatentEmbedding waiting for its turn
        self._share_lock = threading.Lock()
        if self.pub_shared is not None and self._share_period > 0:
            self.create_timer(max(0.01, self._share_period / 4), self._flush_shared)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(max(0.05, p["diagnostics_period"]), self._publish_diagnostics)
        self.create_timer(1.0, self._expire)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="fusion_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"fusing {self.modalities} ({', '.join(self.resolve_topic_name(topics[m][1]) for m in self.modalities)}; "
            f"lidar as {p['lidar_type']}; sensor QoS {p['sensor_qos_reliability']} depth {p['sensor_qos_depth']}), "
            f"targets from {self.resolve_topic_name(p['target_topic'])}, peers on "
            f"{p['shared_latent_topic'] or '(none)'} (trusted: {sorted(self.trusted) or 'all'})")

    # -- parameters -------------------------------------------------------------------------------------------
    PARAMS = [
        ("agent_id", "", "Id of this agent in LatentEmbedding/ClassBelief messages; empty: the node's namespace"),
        ("model_dir", "", "Model bundle directory (manifest.json + ONNX); empty: share/m2vae_fusion/models/amiro "
                          "of the installed package, else the repository's models/amiro"),
        ("check_sums", True, "Verify the sha256 of every bundle file at start-up"),
        ("modalities", ["camera", "lidar", "reflectance"], "Sensors of this agent to subscribe to and fuse "
                                                           "(subset of the bundle's modalities)"),
        ("camera_topic", "camera/image_raw", "sensor_msgs/Image topic (rgb8, bgr8, rgba8, bgra8, mono8)"),
        ("lidar_topic", "scan", "LiDAR topic (sensor_msgs/LaserScan or PointCloud2, see lidar_type)"),
        ("lidar_type", "LaserScan", "Message type of lidar_topic: LaserScan or PointCloud2"),
        ("cloud_z_min", -0.1, "PointCloud2 only: lowest z (m, sensor frame) of points used for the planar scan"),
        ("cloud_z_max", 0.1, "PointCloud2 only: highest z (m, sensor frame) of points used for the planar scan"),
        ("reflectance_topic", "reflectance", "Few-beam reflectance sensor_msgs/LaserScan (ranges + intensities)"),
        ("target_topic", "target_of_interest", "m2vae_fusion_msgs/TargetOfInterest topic: what is observed now"),
        ("latent_topic", "latent", "Output: this agent's LatentEmbedding"),
        ("belief_topic", "belief", "Output: this agent's ClassBelief"),
        ("shared_latent_topic", "/m2vae/latents", "LatentEmbedding topic shared by all agents (published and "
                                                  "merged); empty: no exchange"),
        ("shared_latent_rate", 10.0, "At most this many LatentEmbeddings per second and target go to the shared "
                                     "topic; a newer belief within that time replaces the waiting one and goes out "
                                     "when due (bounds the merge load of every peer; <= 0: every update)"),
        ("trusted_agents", Parameter.Type.STRING_ARRAY, "Agent ids whose latents are merged (a latent holding "
                                                        "evidence of any other agent is dropped); empty: all"),
        ("sensor_qos_reliability", "best_effort", "Sensor subscriptions' reliability: best_effort or reliable"),
        ("sensor_qos_depth", 1, "Sensor subscriptions' history depth (1: newest only)"),
        ("belief_ttl", 30.0, "Seconds without an update after which a belief expires (<= 0: never)"),
        ("max_targets", 16, "At most this many beliefs; the least recently updated one is evicted"),
        ("max_message_age", 2.0, "Sensor messages stamped longer ago than this (s) are dropped as stale (<= 0: off)"),
        ("max_latent_age", 0.0, "Peer latents whose newest evidence is older than this (s) are dropped as stale; "
                                "0: belief_ttl; < 0: off"),
        ("future_tolerance", 0.5, "Messages stamped more than this (s) in the future are dropped"),
        ("target_history", 64, "How many TargetOfInterest messages are kept to find the target at a stamp"),
        ("peer_queue", 64, "Pending peer latents kept (newest per agent and target)"),
        ("ort_threads", 1, "onnxruntime intra-op threads per network"),
        ("ort_providers", ["CPUExecutionProvider"], "onnxruntime execution providers in order of preference "
                                                    "(unavailable ones are skipped)"),
        ("output_frame_id", "", "frame_id of published headers; empty: the target's frame"),
        ("diagnostics_period", 1.0, "Seconds between /diagnostics messages"),
        ("latency_window", 1000, "Latency percentiles are over this many recent observations per source"),
        ("warn_throttle", 5.0, "Seconds between repeated warnings of the same kind"),
    ]

    # -- callbacks (executor thread; cheap) -------------------------------------------------------------------
    def _on_sensor(self, modality: str, msg) -> None:
        self.stats.inc(f"received.{modality}")
        self.mailbox.put_sensor(modality, msg, time.perf_counter_ns())

    def _on_latent(self, msg: LatentEmbedding) -> None:
        recv = time.perf_counter_ns()
        if msg.agent_id == self.agent_id:
            self.stats.inc("ignored.own")
            return
        self.stats.inc("received.peer")
        self.mailbox.put_peer((msg.agent_id, msg.target_id), msg, recv)

    def _on_target(self, msg: TargetOfInterest) -> None:
        stamp = ns_to_s(conv.stamp_to_ns(msg.header.stamp))
        pos = (msg.position.x, msg.position.y, msg.position.z) if msg.has_position else None
        entry = (stamp, msg.target_id, pos, msg.header.frame_id)
        with self._targets_lock:
            if entry in self._targets:  # a repeated announcement (publishers repeat the current target)
                return
            self._targets.append(entry)
            items = sorted(self._targets, key=lambda e: e[0])
            self._targets.clear()
            self._targets.extend(items)
        self.stats.inc("received.target")

    def _target_at(self, stamp: float):
        """(target_id, frame_id) of the newest TargetOfInterest stamped at or before ``stamp``, or None."""
        with self._targets_lock:
            for t, tid, _pos, frame in reversed(self._targets):
                if t <= stamp:
                    return (tid, frame) if tid else None
        return None

    def _on_reset(self, request, response):
        with self._lock:
            n = self.store.clear()
        with self._share_lock:
            self._share_pending.clear()
        self.stats.inc("resets")
        response.success = True
        response.message = f"cleared {n} belief(s)"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def _expire(self) -> None:
        with self._lock:
            gone = self.store.expire()
        if gone:
            self.get_logger().info(f"beliefs expired (ttl {self.p['belief_ttl']} s): {gone}")

    # -- worker -----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            for source, msg, recv in self.mailbox.take(timeout=0.5):
                if self._stop.is_set():
                    return
                try:
                    if source == "peer":
                        self._process_latent(msg, recv)
                    else:
                        self._process_observation(source, msg, recv)
                except Drop as exc:
                    self._drop(source, exc.reason, str(exc))
                except Exception as exc:  # never let one message take the node down
                    if self._stop.is_set() or not rclpy.ok(context=self.context):
                        return
                    self._drop(source, "internal_error", f"{type(exc).__name__}: {exc}")

    def _drop(self, source: str, reason: str, message: str) -> None:
        self.stats.inc(f"dropped.{source}.{reason}")
        self.stats.inc("dropped.total")
        key = (source, reason)
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= self.p["warn_throttle"]:
            self._warned[key] = now
            n = self.stats.get(f"dropped.{source}.{reason}")
            self.get_logger().warning(f"dropped {source} input ({reason}, {n} so far): {message}")

    def _check_stamp(self, stamp: float, max_age: float) -> None:
        now = ns_to_s(self.get_clock().now().nanoseconds)
        if max_age > 0 and now - stamp > max_age:
            raise Drop("stale", f"stamped {now - stamp:.3f} s ago (limit {max_age} s)")
        if stamp - now > self.p["future_tolerance"]:
            raise Drop("future", f"stamped {stamp - now:.3f} s in the future")

    def _raw(self, modality: str, msg):
        """Message → raw numpy input of the modality (ConversionError on bad input)."""
        if modality == "camera":
            return conv.image_to_rgb(msg)
        if modality == "lidar":
            if isinstance(msg, PointCloud2):
                pts = conv.pointcloud2_to_xyz(msg)
                return conv.xyz_to_scan(pts, self.cfg["lidar"], self.p["cloud_z_min"], self.p["cloud_z_max"])
            return conv.scan_to_ranges(msg, self.cfg["lidar"])
        return conv.reflectance_to_array(msg, int(self.cfg["reflectance"]["beams"]))

    def _process_observation(self, modality: str, msg, recv: int) -> None:
        stamp = ns_to_s(conv.stamp_to_ns(msg.header.stamp))
        self._check_stamp(stamp, self.p["max_message_age"])
        target = self._target_at(stamp)
        if target is None:  # between targets: not an error, counted apart from the drops
            self.stats.inc(f"no_target.{modality}")
            return
        target_id, frame = target
        try:
            raw = self._raw(modality, msg)
            x = preprocess(modality, raw, self.cfg[modality])
        except conv.ConversionError as exc:
            raise Drop(exc.reason, str(exc)) from None
        except PreprocessError as exc:
            raise Drop("preprocess", str(exc)) from None
        feature, _ = self.bundle.encode_feature(modality, x)
        if not np.all(np.isfinite(feature)):
            raise Drop("non_finite", "the encoder returned non-finite features")
        with self._lock:
            try:
                belief = self.engine.observe(self.store.get(target_id), target_id, modality, feature[0], stamp,
                                             self.agent_id)
            except FusionError as exc:
                raise Drop("stale" if "stale" in str(exc) else "fusion", str(exc)) from None
            self.store.put(belief)
            self._own_newest[modality] = max(stamp, self._own_newest.get(modality, -math.inf))
            self._publish(belief, frame, shared=True)
        self.stats.inc(f"processed.{modality}")
        self.stats.inc("processed.total")
        self.stats.latency(modality, (time.perf_counter_ns() - recv) * 1e-9)

    def _process_latent(self, msg: LatentEmbedding, recv: int) -> None:
        if self.trusted and msg.agent_id not in self.trusted:
            raise Drop("untrusted", f"latent from untrusted agent {msg.agent_id!r}")
        if msg.model_id != self.bundle.model_id:
            raise Drop("model_id", f"latent from {msg.agent_id!r} has model_id {msg.model_id!r}, "
                                   f"this agent uses {self.bundle.model_id!r}")
        try:
            data = conv.latent_from_msg(msg, self.bundle.modalities, self.bundle.latent_dim)
        except conv.ConversionError as exc:
            raise Drop(exc.reason, f"latent from {msg.agent_id!r}: {exc}") from None
        if self.trusted:  # evidence relayed by a trusted agent must come from trusted agents too
            others = sorted({*data.modality_sources, *data.contributors} - self.trusted - {self.agent_id})
            if others:
                raise Drop("untrusted", f"latent from {msg.agent_id!r} holds evidence of untrusted agents {others}")
        for m, stamp_ns, src in zip(data.modalities, data.modality_stamps_ns, data.modality_sources):
            if src == self.agent_id and ns_to_s(stamp_ns) > self._own_newest.get(m, -math.inf):
                raise Drop("spoofed", f"latent from {msg.agent_id!r} claims {m} evidence of this agent that it never "
                                      "observed")
        max_age = self.p["max_latent_age"] or self.p["belief_ttl"]
        stamps = [ns_to_s(s) for s in data.modality_stamps_ns]
        self._check_stamp(max(stamps), max_age)  # newest slot: not stale, and no slot in the future
        slots = {m: Slot(s, src or data.agent_id) for m, s, src in
                 zip(data.modalities, stamps, data.modality_sources)}
        peer = Belief(data.target_id, data.mean, data.log_variance, slots, time.monotonic())
        with self._lock:
            try:
                belief, changed = self.engine.merge(self.store.get(data.target_id), peer)
            except FusionError as exc:
                raise Drop("fusion", str(exc)) from None
            if not changed:
                self.stats.inc("redundant.peer")
                return
            self.store.put(belief)
            # tell the others only when the merged belief holds something the sender's latent does not
            news = any(belief.slots[m] != slots.get(m) for m in belief.slots)
            self._publish(belief, data.frame_id, shared=news)
        self.stats.inc("processed.peer")
        self.stats.inc("processed.total")
        self.stats.latency("peer", (time.perf_counter_ns() - recv) * 1e-9)

    def _publish(self, belief: Belief, frame: str, shared: bool) -> None:
        order = self.bundle.modalities
        mods = belief.modalities(order)
        data = conv.LatentData(
            agent_id=self.agent_id, target_id=belief.target_id, model_id=self.bundle.model_id,
            stamp_ns=s_to_ns(belief.stamp), frame_id=self.p["output_frame_id"] or frame, modalities=mods,
            modality_stamps_ns=tuple(s_to_ns(belief.slots[m].stamp) for m in mods),
            modality_sources=tuple(belief.slots[m].agent for m in mods), contributors=belief.contributors,
            mean=belief.mean, log_variance=belief.log_variance)
        msg = conv.latent_to_msg(data)
        self.pub_latent.publish(msg)
        if shared and self.pub_shared is not None:
            self._share(belief.target_id, msg)
        probs = self.engine.classify(belief)
        if probs is None:
            if not self._head_warned:
                self._head_warned = True
                self.get_logger().warning("the bundle has no class-belief head: no ClassBelief is published")
            return
        self.pub_belief.publish(conv.class_belief_msg(data, self.bundle.class_names, probs))

    # -- diagnostics ------------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        values = self.stats.snapshot()
        with self._lock:
            values["beliefs"] = len(self.store)
            values["beliefs.expired"] = self.store.expired
            values["beliefs.evicted"] = self.store.evicted
        dropped = values.get("dropped.total", 0)
        last = getattr(self, "_last_dropped", 0)
        self._last_dropped = dropped
        with self._targets_lock:
            current = self._targets[-1][1] if self._targets else ""
        info = {"agent_id": self.agent_id, "model_id": self.bundle.model_id, "model_dir": self.bundle.path,
                "providers": ",".join(self.bundle.providers), "modalities": ",".join(self.modalities),
                "target": current}
        level = DiagnosticStatus.WARN if dropped > last else DiagnosticStatus.OK
        msg = diagnostic_array(self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: fusion",
                               self.agent_id, values, info, level,
                               f"{values.get('processed.total', 0)} fused, {dropped} dropped "
                               f"({dropped - last} in the last period)")
        self.pub_diag.publish(msg)

    def _share(self, target_id: str, msg: LatentEmbedding) -> None:
        """Send ``msg`` on the shared topic now if this target's last shared latent is at least one period old,
        else keep it (replacing an older waiting one) for :meth:`_flush_shared`."""
        now = time.monotonic()
        with self._share_lock:
            if now - self._share_last.get(target_id, -math.inf) >= self._share_period:
                self._share_last[target_id] = now
                self._share_pending.pop(target_id, None)
                self.pub_shared.publish(msg)
                self.stats.inc("shared.sent")
                return
            if target_id in self._share_pending:
                self.stats.inc("shared.coalesced")
            self._share_pending[target_id] = msg

    def _flush_shared(self) -> None:
        """Timer: send the waiting shared latents whose period has passed."""
        now = time.monotonic()
        with self._share_lock:
            due = [t for t in self._share_pending if now - self._share_last.get(t, -math.inf) >= self._share_period]
            for t in due:
                self._share_last[t] = now
                self.pub_shared.publish(self._share_pending.pop(t))
                self.stats.inc("shared.sent")

    def stop(self) -> None:
        """Stop the worker thread (before destroying the node)."""
        self._stop.set()
        self.mailbox.close()
        self._worker.join(timeout=5.0)


def main(args=None) -> int:
    """Entry point ``fusion_node``: exit 0 on SIGINT/SIGTERM, 2 on a bad bundle or parameter."""
    return run_node(FusionNode, "fusion_node", "stop", args)


if __name__ == "__main__":
    sys.exit(main())
