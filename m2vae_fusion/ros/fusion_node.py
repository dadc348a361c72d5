"""The fusion node: one per agent, a managed (lifecycle) rclpy node over :class:`m2vae_fusion.core.agent.Agent`.
Sensor messages → β-VAE features → in-place fusion into the belief about the current target; peers' latents →
merge; publishes the latent embedding and the class belief.

Run: ``fusion_node --ros-args -r __ns:=/agent1 --params-file config/fusion.yaml`` (or
``python -m m2vae_fusion.ros.fusion_node …``). Parameters are declared with descriptions (``ros2 param describe``).

Lifecycle (REP-less ROS 2 managed nodes, ``lifecycle_msgs``; services ``~/change_state``, ``~/get_state``):
``configure`` reads the parameters and loads and verifies the bundle, ``activate`` creates the subscriptions,
publishers and timers, ``deactivate`` releases them (beliefs are kept), ``cleanup`` forgets the bundle and the
beliefs, ``shutdown`` releases everything. With ``autostart`` (default true) the node configures and activates
itself, so one command runs it. Runtime-safe parameters (rates, TTLs, ages, trust list, …) may be changed while it
runs (``ros2 param set``); the others are refused with a reason while configured.

Topics (relative names resolve in the node's namespace):

- subscribes ``camera/image_raw`` (sensor_msgs/Image), ``camera/camera_info`` (sensor_msgs/CameraInfo: its ``k``
  places the target-centred crop of a bundle that crops, when it matches the image size), ``scan`` (sensor_msgs/LaserScan or PointCloud2, parameter
  ``lidar_type``), ``reflectance`` (sensor_msgs/LaserScan with intensities), ``target_of_interest``
  (m2vae_fusion_msgs/TargetOfInterest), the shared latent topic ``/m2vae/latents`` (m2vae_fusion_msgs/LatentEmbedding);
- publishes ``latent`` (LatentEmbedding), the shared latent topic, ``belief`` (m2vae_fusion_msgs/ClassBelief),
  ``/diagnostics`` (diagnostic_msgs/DiagnosticArray: counters, rates, latencies, the peer-evidence age
  ``peer_evidence.age_s[.p50|.p90|.p99|.max]``: how stale the node's copy of a peer's evidence about the target both
  observe is while the peer keeps observing it, :mod:`m2vae_fusion.core.agent`);
- service ``~/reset`` (std_srvs/Trigger): forget every belief.

Execution: the work runs on one thread. The node runs under rclpy's ``EventsExecutor`` driven by a ``spin_once``
loop on the main thread (:func:`m2vae_fusion.ros.spin.run_node`; parameter ``executor: single`` for rclpy's
SingleThreadedExecutor). Sensor messages are converted, encoded, fused and published in their callback: the sensor
subscriptions are best-effort with depth 1 by default, so DDS keeps only the newest message per sensor while one is
processed and a slow model never builds a backlog; TargetOfInterest messages already received are taken first, so an
announcement is applied before an observation stamped after it even when their callbacks arrive in the other order.
Peer latents are merged in their callback too, only when they add
evidence (a newer slot); their subscription (best effort by default, ``peer_qos_reliability``: a lost latent is
superseded by the next instead of holding newer ones back until DDS repairs it) keeps at most ``peer_queue``
waiting; the shared-topic publisher is reliable. A callback takes every waiting latent and merges only the newest
per (peer, target) that is not dropped (the others are counted as ``superseded.peer``). Restart identity and late
joiners (message format 3): the node's incarnation is the ROS-clock time at configure; when the shared publisher
gains readers (checked at every diagnostics tick) or a peer's latent shows a new incarnation, every held belief is
re-shared (:meth:`~m2vae_fusion.core.agent.Agent.resync`).
The crop (bundles whose preprocessing enables one, docs/formats.md) is centred on the TargetOfInterest ``position``
when it is given in ``base_frame``, projected through the newest CameraInfo ``k`` and the ``camera_to_base``
parameter (else the bundle's); otherwise the preprocessing's fallback is used (counted as ``crop_fallback.*``).
``latent`` and ``belief`` messages are built only while someone subscribes to them. The node never takes back
its own shared latents: a DDS content filter (``agent_id <> own``) keeps them out of the subscription where the
middleware supports it, else the callback ignores them first thing. A shared latent held back by
``shared_latent_rate`` is sent when due by a small thread that sleeps until then (no fixed-rate flush timer; no
executor timer is re-armed per message: with rclpy 9.1.2's EventsExecutor that deadlocked nodes under load). Stamps
of outputs are the stamp of the newest evidence. No torch here: numpy, onnxruntime and rclpy only.
"""
from __future__ import annotations

import math
import threading
import time
from typing import NoReturn

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import ContentFilterOptions

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from m2vae_fusion_msgs.msg import ClassBelief, LatentEmbedding, TargetOfInterest
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2
from std_srvs.srv import Trigger
from threadpoolctl import threadpool_limits

from m2vae_fusion.core.agent import (FORMAT_VERSION, Agent, AgentConfig, Drop, LatentOutput, drop_from, ns_to_s,
                                     s_to_ns)
from m2vae_fusion.core.bundle import Bundle
from m2vae_fusion.core.modalities import MODALITIES
from m2vae_fusion.core.fusion import CLASS_BELIEFS, FusionEngine
from m2vae_fusion.core.reasons import DropReason
from m2vae_fusion.errors import UserError
from m2vae_fusion.paths import default_bundle_path
from m2vae_fusion.core import messages as conv
from m2vae_fusion.ros.params import ConfigError, coerce, declare_parameters, read_parameters
from m2vae_fusion.ros.spin import process_exit, run_node
from m2vae_fusion.ros.stats import NodeStats, diagnostic_array

__all__ = ["FusionNode", "main", "ns_to_s", "s_to_ns"]

#: parameters that may change while the node is configured (applied at once); the agent's runtime fields first
RUNTIME_PARAMS = {"shared_latent_rate": "shared_latent_rate", "belief_ttl": "belief_ttl",
                  "max_message_age": "max_message_age", "max_latent_age": "max_latent_age",
                  "future_tolerance": "future_tolerance", "trusted_agents": "trusted",
                  "output_frame_id": "output_frame_id", "warn_throttle": None,
                  "forgetting_factor": "forgetting_factor", "outlier_gate": "outlier_gate",
                  "change_confirmations": "change_confirmations", "change_confirm_time": "change_confirm_time",
                  "novelty_threshold": "novelty_threshold", "view_time": "view_time",
                  "class_belief": "class_belief", "class_change_margin": "class_change_margin",
                  "change_tolerance": "change_tolerance"}


#: seconds from seeing a new reader of the shared-topic publisher to the re-share of every held belief: the writer
#: side may match first, and a volatile reader that has not yet matched this writer misses what is sent meanwhile
RESYNC_DELAY = 0.5
#: seconds after a new reader appeared at which the re-share is repeated (each lost with the link's loss rate)
RESYNC_REPEATS = (2.0, 5.0)


class _ShareFlusher:
    """Sends the throttled shared latents when they are due, from a thread of its own that sleeps until the earliest
    one is due and otherwise waits to be poked (no fixed-rate timer; at most ``shared_latent_rate`` wake-ups per
    second and target). rclpy's EventsExecutor (9.1.2) deadlocked when timers were reset from callbacks, so no
    executor timer is re-armed per message."""

    def __init__(self, agent: Agent, publish):
        self.agent, self.publish = agent, publish
        self.deadline = 0.0  # time.monotonic() the thread sleeps until; None: until poked; 0: awake (will look)
        self.cv = threading.Condition()
        self.writer = _LatentWriter()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="share_flusher", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        """A share is waiting: wake the thread only when it would not look in time by itself (it is asleep with no
        deadline, or with a later one). Waking it for every throttled latent cost a thread switch per observation
        (0.6 ms of GIL hand-over each, measured)."""
        due = self.agent.next_share_due()
        if due is None:
            return
        with self.cv:
            if self.deadline is not None and self.deadline <= time.monotonic() + due:
                return
            self.cv.notify()

    def _run(self) -> None:
        while True:
            with self.cv:
                if self.stopped:
                    return
                due = self.agent.next_share_due()
                if due is None or due > 0:
                    self.deadline = None if due is None else time.monotonic() + due
                    self.cv.wait(due)
                    self.deadline = 0.0
                    continue
            try:
                for latent in self.agent.due_shares():
                    self.publish(self.writer.fill(latent))
            except Exception:  # the context shut down under us (SIGINT/SIGTERM): the end
                if self.stopped or not rclpy.ok():
                    return
                raise

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.thread.join(timeout=5.0)


def latent_msg(out: LatentOutput) -> LatentEmbedding:
    """:class:`LatentOutput` → m2vae_fusion_msgs/LatentEmbedding (format 4)."""
    msg = conv.latent_to_msg(conv.LatentData(
        agent_id=out.agent_id, target_id=out.target_id, model_id=out.model_id, stamp_ns=out.stamp_ns,
        modalities=out.modalities, modality_stamps_ns=out.modality_stamps_ns, modality_sources=out.modality_sources,
        contributors=out.contributors, mean=out.mean, log_variance=out.log_variance, frame_id=out.frame_id,
        incarnation=out.incarnation, modality_source_incarnations=out.modality_source_incarnations,
        contribution_modalities=out.contribution_modalities, contribution_sources=out.contribution_sources,
        contribution_stamps_ns=out.contribution_stamps_ns, slot_features=out.slot_features,
        slot_precisions=out.slot_precisions, slot_class_evidence=out.slot_class_evidence))
    msg.format_version = out.format_version
    return msg


class _LatentWriter:
    """Fills one LatentEmbedding in place per output (the same content as :func:`latent_msg`): rclpy serialises a
    message inside ``publish()``, so one message object per thread can be reused; the stamps are
    builtin_interfaces/Time objects kept per nanosecond value (the held slots' stamps repeat from one output to the
    next). Measured here: 35 µs per message vs 140 µs for a new message (rclpy 9.1.2 generated classes build every
    default field in ``__init__``). One writer per thread; the message is valid until the next :meth:`fill`."""

    CACHE = 128

    def __init__(self):
        self.msg = LatentEmbedding()
        self._stamps: dict = {}

    def _stamp(self, ns: int):
        t = self._stamps.get(ns)
        if t is None:
            if len(self._stamps) >= self.CACHE:  # forget the oldest (first inserted): a latent lists up to 16
                del self._stamps[next(iter(self._stamps))]  # contributions per slot, a clear rebuilt them all
            t = self._stamps[ns] = conv.ns_to_stamp(ns)
        return t

    def fill(self, out: LatentOutput) -> LatentEmbedding:
        msg = self.msg
        msg.header.stamp = self._stamp(out.stamp_ns)
        msg.header.frame_id = out.frame_id
        msg.agent_id, msg.target_id, msg.model_id = out.agent_id, out.target_id, out.model_id
        msg.modalities = list(out.modalities)
        msg.modality_stamps = [self._stamp(ns) for ns in out.modality_stamps_ns]
        msg.modality_sources = list(out.modality_sources)
        msg.contributors = list(out.contributors)
        msg.mean = np.asarray(out.mean, dtype=np.float32).ravel()
        msg.log_variance = np.asarray(out.log_variance, dtype=np.float32).ravel()
        msg.incarnation = int(out.incarnation)
        msg.modality_source_incarnations = [int(i) for i in out.modality_source_incarnations]
        msg.contribution_modalities = list(out.contribution_modalities)
        msg.contribution_sources = list(out.contribution_sources)
        msg.contribution_stamps = [self._stamp(ns) for ns in out.contribution_stamps_ns]
        if out.slot_features is not None and out.slot_precisions is not None:
            msg.slot_features = np.asarray(out.slot_features, dtype=np.float32).ravel()
            msg.slot_precisions = np.asarray(out.slot_precisions, dtype=np.float32).ravel()
        else:
            msg.slot_features, msg.slot_precisions = [], []
        msg.slot_class_evidence = ([] if out.slot_class_evidence is None else
                                   np.asarray(out.slot_class_evidence, dtype=np.float32).ravel())
        msg.format_version = out.format_version
        return msg


def belief_msg(out, latent: LatentEmbedding | None = None) -> ClassBelief:
    """:class:`~m2vae_fusion.core.agent.BeliefOutput` → m2vae_fusion_msgs/ClassBelief (format 3)."""
    lat = out.latent
    msg = ClassBelief(header=latent.header if latent is not None else conv.make_header(lat.stamp_ns, lat.frame_id),
                      agent_id=lat.agent_id, target_id=lat.target_id, model_id=lat.model_id,
                      modalities=list(lat.modalities), contributors=list(lat.contributors),
                      class_names=list(out.class_names), format_version=out.format_version,
                      novelty=float(out.novelty), novelty_threshold=float(out.novelty_threshold),
                      class_belief=out.class_belief)
    msg.probabilities = np.asarray(out.probabilities, dtype=np.float32).ravel()
    return msg


class FusionNode(LifecycleNode):
    """See the module docstring. Raises :class:`ConfigError` from the constructor for a parameter of the wrong
    type; :meth:`start` (autostart) raises :class:`BundleError` / :class:`ConfigError` when configuring fails."""

    def __init__(self, node_name: str = "fusion_node", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, self.PARAMS)
        self.p: dict = {}
        self.agent: Agent | None = None
        self.bundle: Bundle | None = None
        self.stats = NodeStats()
        self.config_error: UserError | None = None
        self._warned: dict = {}
        self._head_warned = False
        self._last_dropped = 0
        self._active: list = []       # subscriptions, publishers, timers of the active state
        self._reset_srv = None
        self.pub_latent = self.pub_shared = self.pub_belief = self.pub_diag = None
        self._diag_timer = self._target_sub = self._latent_sub = None
        self._flusher: _ShareFlusher | None = None
        self._camera_k = None         # newest CameraInfo: ((width, height), k)
        self._writer = _LatentWriter()  # the callbacks' message (the flusher thread has its own)
        self.own_filter = ""          # how own shared latents are kept out: content_filter (DDS) or callback
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters -------------------------------------------------------------------------------------------
    PARAMS = [
        ("autostart", True, "Configure and activate at start-up (false: wait in the unconfigured lifecycle state "
                            "for ~/change_state)"),
        ("executor", "events", "rclpy executor of the process: events (rclpy.experimental.EventsExecutor, fewest "
                               "wake-ups; default) or single (rclpy.executors.SingleThreadedExecutor); read at start"),
        ("agent_id", "", "Id of this agent in LatentEmbedding/ClassBelief messages; empty: the node's namespace"),
        ("model_dir", "", "Model bundle directory (manifest.json + ONNX); empty: share/m2vae_fusion/models/amiro "
                          "of the installed package, else the repository's models/amiro"),
        ("check_sums", True, "Verify the sha256 of every bundle file at start-up"),
        ("modalities", list(MODALITIES), "Sensors of this agent to subscribe to and fuse "
                                                           "(subset of the bundle's modalities)"),
        ("camera_topic", "camera/image_raw", "sensor_msgs/Image topic (rgb8, bgr8, rgba8, bgra8, mono8)"),
        ("camera_info_topic", "camera/camera_info", "sensor_msgs/CameraInfo topic of the camera: its k (intrinsics) "
                                                    "places the target-centred crop when it matches the image size "
                                                    "(else the bundle's K); empty: not subscribed"),
        ("base_frame", "base_link", "Frame of the TargetOfInterest positions the crop uses (the robot's base; "
                                    "positions in other frames: the preprocessing fallback, no tf)"),
        ("camera_to_base", Parameter.Type.DOUBLE_ARRAY, "Fixed camera-to-base translation [x, y, z] (m, optical "
                                                        "centre in base_frame) for the crop; empty: the bundle's"),
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
        ("target_history", 64, "How many TargetOfInterest messages are kept to find the target at a stamp (also "
                              "the target subscription's queue depth)"),
        ("peer_queue", 64, "History depth of the shared-latent subscription (keep-last): at most this many "
                           "peer latents wait while the node is busy"),
        ("peer_qos_reliability", "best_effort", "Shared-latent subscription's reliability: best_effort (default: a "
                                                "lost latent is superseded by the next one instead of holding back "
                                                "newer ones until it is repaired; measured under 20 % loss: newest "
                                                "peer evidence age p99 0.40 s vs 1.07 s reliable) or reliable. The "
                                                "shared-topic publisher is always reliable, so reliable readers "
                                                "(recorders, ros2 topic echo) match it"),
        ("ort_threads", 1, "onnxruntime intra-op threads per network, also the threads of OpenCV and of numpy's "
                           "BLAS for the preprocessing (process-wide; their defaults, one per core, doubled a "
                           "camera observation's CPU on 2 cores)"),
        ("ort_providers", ["CPUExecutionProvider"], "onnxruntime execution providers in order of preference "
                                                    "(unavailable ones are skipped)"),
        ("output_frame_id", "", "frame_id of published headers; empty: the target's frame"),
        ("diagnostics_period", 1.0, "Seconds between /diagnostics messages"),
        ("forgetting_factor", 0.99, "Evidence accumulation: repeated observations of one sensor multiply into its "
                                    "slot (product of Gaussian experts); the held evidence is weighted by this factor "
                                    "at each new observation, so a steady stream counts as 1/(1-factor) observations "
                                    "(0: each observation replaces the last, as in the paper; 1: never forget)"),
        ("outlier_gate", 1.25, "An observation farther than this from its slot's accumulated feature (rms over "
                               "dimensions, in units of the calibrated in-distribution spread) is held back, not "
                               "fused"),
        ("change_confirmations", 4, "When this many consecutive observations of a slot were held back as agreeing "
                                    "outliers (and change_confirm_time has passed), the object changed: the slot "
                                    "becomes the held-back observations"),
        ("change_confirm_time", 2.0, "Seconds (stamps) the run of agreeing outliers must span before it replaces a "
                                     "slot, so that the few frames of one new view of a 10-30 Hz sensor do not "
                                     "(0: the count alone)"),
        ("view_time", 2.0, "Class evidence: observations of one sensor less than this many seconds apart count as "
                           "a fraction (dt / view_time) of one view, so a 30 Hz camera does not outweigh a 10 Hz "
                           "LiDAR (0: every observation one view)"),
        ("class_belief", "evidence", "Class belief published on ~/belief: 'evidence' (product over sensors and "
                                     "views of the unimodal class posteriors each slot accumulated) or 'latent' (the "
                                     "class-belief head on the fused latent, as in the FUSION 2019 paper)"),
        ("class_change_margin", 0.5, "Class evidence: an observation supports 'the object changed' when its log "
                                     "predictive likelihood under a new object of unknown class exceeds the one "
                                     "under the held class belief by more than this (nats); change_confirmations "
                                     "views of agreeing supports over change_confirm_time replace the slot"),
        ("change_tolerance", 1, "Class evidence: observations of a run of change supports that side with the held "
                                "belief or support another change before the run ends (a misread of the new object "
                                "need not restart its count; 0: the first one ends it)"),
        ("novelty_threshold", 0.0, "Observations whose novelty score (two-sided test of the β-VAE ELBO terms, "
                                   "calibrated on in-distribution data in the bundle manifest) exceeds this are not "
                                   "fused (dropped.<sensor>.novel); 0: the bundle's calibrated threshold; < 0: off"),
        ("latency_window", 1000, "Latency percentiles are over this many recent observations per source"),
        ("warn_throttle", 5.0, "Seconds between repeated warnings of the same kind"),
    ]

    @property
    def executor_kind(self) -> str:
        """``executor`` parameter: which rclpy executor :func:`m2vae_fusion.ros.spin.run_node` spins this node on."""
        return self.get_parameter("executor").value

    @property
    def agent_id(self) -> str:
        return self.agent.agent_id if self.agent is not None else ""

    @property
    def state_label(self) -> str:
        """Current lifecycle state: unconfigured, inactive, active, finalized, …"""
        return self._state_machine.current_state[1]

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Runtime-safe parameters are applied at once; the others only while unconfigured (read at configure)."""
        if self.agent is None:
            return SetParametersResult(successful=True)
        table = {name: default for name, default, _ in self.PARAMS}
        changes, other = {}, {}
        for prm in params:
            if prm.name not in RUNTIME_PARAMS:
                return SetParametersResult(successful=False, reason=(
                    f"parameter {prm.name} is read at configure: deactivate, cleanup, set it, then configure and "
                    f"activate again (runtime-safe: {sorted(RUNTIME_PARAMS)})"))
            try:
                value = coerce(prm.name, table[prm.name], prm.value)
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if RUNTIME_PARAMS[prm.name]:
                changes[RUNTIME_PARAMS[prm.name]] = value
            other[prm.name] = value
        try:
            self.agent.reconfigure(**changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.p.update(other)
        if other:
            self.get_logger().info(f"parameters changed at runtime: {other}")
        return SetParametersResult(successful=True)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """``autostart``: configure and activate now.

        Raises:
            BundleError, ConfigError: configuring failed (the cause names the file or parameter).
        """
        if self.executor_kind not in ("events", "single"):
            raise ConfigError(f"parameter executor must be events or single, got {self.executor_kind!r}")
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting in the unconfigured state for ~/change_state")
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise self.config_error or ConfigError("configure failed")
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise ConfigError("activate failed")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except UserError as exc:
            self.config_error = exc
            self.agent = self.bundle = None
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        p = read_parameters(self, self.PARAMS)
        if p["lidar_type"] not in ("LaserScan", "PointCloud2"):
            raise ConfigError(f"parameter lidar_type must be LaserScan or PointCloud2, got {p['lidar_type']!r}")
        for name in ("max_targets", "sensor_qos_depth", "target_history", "peer_queue", "ort_threads"):
            if p[name] < 1:
                raise ConfigError(f"parameter {name} must be at least 1, got {p[name]}")
        if p["peer_qos_reliability"] not in ("best_effort", "reliable"):
            raise ConfigError("parameter peer_qos_reliability must be best_effort or reliable, got "
                              f"{p['peer_qos_reliability']!r}")
        if p["sensor_qos_reliability"] not in ("best_effort", "reliable"):
            raise ConfigError("parameter sensor_qos_reliability must be best_effort or reliable, got "
                              f"{p['sensor_qos_reliability']!r}")
        import cv2
        import onnxruntime as ort

        cv2.setNumThreads(int(p["ort_threads"]))
        # numpy's BLAS (OpenBLAS) runs a matrix product of the camera crop on every core and its threads spin
        # between calls: 57 % of a core per agent instead of 25 % in `bench runtime` (py-spy)
        threadpool_limits(limits=int(p["ort_threads"]), user_api="blas")
        available = ort.get_available_providers()
        wanted = [x for x in p["ort_providers"] if x] or ["CPUExecutionProvider"]
        missing = [x for x in wanted if x not in available]
        if missing:
            self.get_logger().warning(f"onnxruntime execution providers {missing} are not available here "
                                      f"(available: {available}); skipping them")
        bundle = Bundle.load(p["model_dir"] or default_bundle_path(), check_sums=p["check_sums"],
                             threads=p["ort_threads"], providers=wanted)
        modalities = tuple(m for m in p["modalities"] if m)
        if not modalities:
            raise ConfigError("parameter modalities is empty: name at least one of the bundle's modalities")
        bad = [m for m in modalities if m not in bundle.modalities]
        if bad:
            raise ConfigError(f"parameter modalities: {bad} not in the bundle's modalities "
                              f"{list(bundle.modalities)} ({bundle.path})")
        agent_id = p["agent_id"] or self.get_namespace().strip("/").replace("/", "_") or self.get_name()
        self.stats = NodeStats(p["latency_window"])
        config = AgentConfig(
            agent_id=agent_id, modalities=modalities, trusted=frozenset(a for a in p["trusted_agents"] if a),
            belief_ttl=p["belief_ttl"], max_targets=p["max_targets"], max_message_age=p["max_message_age"],
            max_latent_age=p["max_latent_age"], future_tolerance=p["future_tolerance"],
            target_history=p["target_history"], shared_latent_rate=p["shared_latent_rate"],
            share=bool(p["shared_latent_topic"]), output_frame_id=p["output_frame_id"], base_frame=p["base_frame"],
            forgetting_factor=p["forgetting_factor"], outlier_gate=p["outlier_gate"],
            change_confirmations=p["change_confirmations"], change_confirm_time=p["change_confirm_time"],
            novelty_threshold=p["novelty_threshold"], view_time=p["view_time"], class_belief=p["class_belief"],
            class_change_margin=p["class_change_margin"], change_tolerance=p["change_tolerance"])
        try:
            config.accumulation
        except ValueError as exc:
            raise ConfigError(f"parameters forgetting_factor / outlier_gate / change_confirmations / "
                              f"change_confirm_time / view_time / class_change_margin / change_tolerance: "
                              f"{exc}") from None
        if p["class_belief"] not in CLASS_BELIEFS:
            raise ConfigError(f"parameter class_belief: {p['class_belief']!r} is not one of {list(CLASS_BELIEFS)}")
        # this process's incarnation: its start stamp on the ROS clock (the stamps' time base); the wall clock while a
        # simulated clock has not started
        incarnation = self.get_clock().now().nanoseconds or time.time_ns()
        self.agent = Agent(FusionEngine(bundle), config, count=self.stats.inc, incarnation=incarnation)
        if p["camera_to_base"] and "camera" in self.agent.cfg:
            t = [float(v) for v in p["camera_to_base"]]
            if len(t) != 3 or not all(math.isfinite(v) for v in t):
                raise ConfigError(f"parameter camera_to_base must be 3 finite numbers [x, y, z] (m), got {t}")
            self.agent.cfg["camera"] = {**self.agent.cfg["camera"], "camera_to_base": {"translation": t}}
        self._camera_k = None
        self.bundle, self.p = bundle, p
        self.modalities = list(modalities)
        self.config_error = None
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)
        self.get_logger().info(
            f"agent {agent_id}: bundle {bundle.path} model_id {bundle.model_id} (modalities "
            f"{list(bundle.modalities)}, latent_dim {bundle.latent_dim}, head {'yes' if bundle.has_head else 'no'}); "
            f"onnxruntime {ort.__version__} providers in use {bundle.providers}, {p['ort_threads']} thread(s)")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
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
        self._readers = 0
        self._resync_again: list = []
        self._own_readers = (0, 0)  # matched readers of ~/latent and ~/belief at the last check
        self._republish_at: float | None = None
        self.pub_belief = self.create_publisher(ClassBelief, p["belief_topic"], reliable)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._active = [x for x in (self.pub_latent, self.pub_shared, self.pub_belief, self.pub_diag) if x]
        topics = {"camera": (Image, p["camera_topic"]),
                  "lidar": (PointCloud2 if p["lidar_type"] == "PointCloud2" else LaserScan, p["lidar_topic"]),
                  "reflectance": (LaserScan, p["reflectance_topic"])}
        # targets first: every sensor callback takes the announcements already received before it looks one up
        # (the EventsExecutor runs callbacks in arrival order across topics, so an announcement stamped before an
        # observation may otherwise be handled after it)
        self._target_sub = self.create_subscription(TargetOfInterest, p["target_topic"], self._on_target,
                                                    QoSProfile(depth=p["target_history"],
                                                               reliability=ReliabilityPolicy.RELIABLE))
        self._active.append(self._target_sub)
        if "camera" in self.modalities and p["camera_info_topic"]:
            self._active.append(self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_camera_info,
                                                         QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)))
        for m in self.modalities:
            mtype, topic = topics[m]
            self._active.append(self.create_subscription(
                mtype, topic, lambda msg, m=m: self._on_sensor(m, msg), sensor_qos))
        self._diag_timer = self.create_timer(max(0.05, p["diagnostics_period"]), self._on_diag_timer)
        self._active.append(self._diag_timer)
        if self.pub_shared is not None:
            self._flusher = _ShareFlusher(self.agent, self.pub_shared.publish)
        if p["shared_latent_topic"]:
            self._latent_sub = self._latent_subscription(p["shared_latent_topic"])
            self._active.append(self._latent_sub)
        trusted = sorted(self.agent.config.trusted) or "all"
        self.get_logger().info(
            f"fusing {self.modalities} ({', '.join(self.resolve_topic_name(topics[m][1]) for m in self.modalities)}; "
            f"lidar as {p['lidar_type']}; sensor QoS {p['sensor_qos_reliability']} depth {p['sensor_qos_depth']}), "
            f"targets from {self.resolve_topic_name(p['target_topic'])}, peers on "
            f"{p['shared_latent_topic'] or '(none)'} (trusted: {trusted}; own latents kept out by "
            f"{self.own_filter or '-'}); message format {FORMAT_VERSION}")
        return TransitionCallbackReturn.SUCCESS

    def _latent_subscription(self, topic: str):
        """The shared-topic subscription. Own latents are excluded by DDS with a content filter (``agent_id <> own``;
        never delivered, never deserialized: measured 0.3 % vs 7 % of a core at 200 own latents/s) where the
        middleware supports it; else the callback ignores them first thing (``ignored.own``)."""
        qos = QoSProfile(depth=max(1, self.p["peer_queue"]),
                         reliability=(ReliabilityPolicy.BEST_EFFORT if self.p["peer_qos_reliability"] == "best_effort"
                                      else ReliabilityPolicy.RELIABLE))
        me = self.agent.agent_id.replace("'", "''")
        try:
            sub = self.create_subscription(LatentEmbedding, topic, self._on_latent, qos,
                                           content_filter_options=ContentFilterOptions("agent_id <> %0", [f"'{me}'"]))
            if sub.is_cft_enabled:
                self.own_filter = "content_filter"
                return sub
            self.destroy_subscription(sub)
        except Exception as exc:  # a middleware without content-filtered topics
            self.get_logger().info(f"no content filter for own latents ({type(exc).__name__}: {exc}); the callback "
                                   "ignores them")
        self.own_filter = "callback"
        return self.create_subscription(LatentEmbedding, topic, self._on_latent, qos)

    def _release_active(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        for ent in reversed(self._active):
            if hasattr(ent, "cancel"):
                ent.cancel()
                self.destroy_timer(ent)
            elif hasattr(ent, "publish"):
                self.destroy_publisher(ent)
            else:
                self.destroy_subscription(ent)
        self._active = []
        self.pub_latent = self.pub_shared = self.pub_belief = self.pub_diag = None
        self._diag_timer = self._target_sub = self._latent_sub = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self.get_logger().info("deactivated: subscriptions and publishers released (beliefs kept)")
        return TransitionCallbackReturn.SUCCESS

    def _release_configured(self) -> None:
        if self._reset_srv is not None:
            self.destroy_service(self._reset_srv)
            self._reset_srv = None
        self.agent = self.bundle = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_configured()
        self.get_logger().info("cleaned up: bundle and beliefs released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Release everything (subscriptions, publishers, timers, services, bundle); idempotent."""
        self._release_active()
        self._release_configured()

    # -- callbacks (one thread) -------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return ns_to_s(self.get_clock().now().nanoseconds)

    def _on_target(self, msg: TargetOfInterest) -> None:
        pos = (msg.position.x, msg.position.y, msg.position.z) if msg.has_position else None
        if self.agent.on_target(ns_to_s(conv.stamp_to_ns(msg.header.stamp)), msg.target_id, msg.header.frame_id,
                                pos):
            self.stats.inc("received.target")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Keep the newest camera intrinsics ((width, height), k) for the crop; an uncalibrated camera's k (zeros,
        non-finite) clears them (the bundle's K is used): :func:`m2vae_fusion.core.messages.camera_info_k`."""
        self._camera_k = conv.camera_info_k(msg)

    def _camera_k_for(self, msg) -> tuple | None:
        """The newest CameraInfo.k when it describes an image of this size (else None: the bundle's K)."""
        info = self._camera_k
        if info is None or info[0] != (int(msg.width), int(msg.height)):
            return None
        return info[1]

    def _take_targets(self) -> None:
        """Handle the TargetOfInterest messages already received (their own callback events then find nothing)."""
        handle = self._target_sub.handle
        with handle:
            while True:
                got = handle.take_message(TargetOfInterest, False)
                if got is None:
                    return
                self._on_target(got[0])

    def _on_sensor(self, modality: str, msg) -> None:
        recv = time.perf_counter_ns()
        self.stats.inc(f"received.{modality}")
        try:
            self._take_targets()
            stamp = ns_to_s(conv.stamp_to_ns(msg.header.stamp))
            target = self.agent.admit(modality, stamp, self._now_s())
            if target is None:  # between targets: not an error, counted apart from the drops
                return
            out = self.agent.observe(modality, stamp, lambda: self._raw(modality, msg), target,
                                     camera_k=self._camera_k_for(msg) if modality == "camera" else None)
            self._publish(out)
        except Drop as exc:
            self._drop(modality, exc.reason, str(exc))
            return
        except Exception as exc:  # never let one message take the node down
            self._drop(modality, DropReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.stats.inc(f"processed.{modality}")
        self.stats.inc("processed.total")
        self.stats.latency(modality, (time.perf_counter_ns() - recv) * 1e-9)

    def _raw(self, modality: str, msg):
        """Message → raw numpy input of the modality (ConversionError, with a reason, on bad input)."""
        if modality == "camera":
            return conv.image_to_rgb(msg)
        cfg = self.agent.cfg
        if modality == "lidar":
            if isinstance(msg, PointCloud2):
                pts = conv.pointcloud2_to_xyz(msg)
                return conv.xyz_to_scan(pts, cfg["lidar"], self.p["cloud_z_min"], self.p["cloud_z_max"])
            return conv.scan_to_ranges(msg, cfg["lidar"])
        return conv.reflectance_to_array(msg, int(cfg["reflectance"]["beams"]))

    def _on_latent(self, msg: LatentEmbedding) -> None:
        """Peer latents, newest per (peer, target): the ones already waiting in the subscription are taken too and
        only the newest of each (peer, target) is merged (the others are counted as ``superseded.peer``), so a
        node that fell behind merges one latent per peer and target, not every stale one (their own callback
        events then find nothing). A latent that is dropped (a bad one claiming the newest stamp, say) does not
        supersede: the next newest of its (peer, target) is tried in its place."""
        batch: dict = {}
        self._collect_latent(batch, msg, time.perf_counter_ns())
        sub = self._latent_sub
        if sub is not None:
            with sub.handle:
                while True:
                    got = sub.handle.take_message(LatentEmbedding, False)
                    if got is None:
                        break
                    self._collect_latent(batch, got[0], time.perf_counter_ns())
        for waiting in batch.values():
            waiting.sort(key=lambda e: e[0], reverse=True)  # newest first
            for i, (_, msg, recv) in enumerate(waiting):
                try:
                    self._process_latent(msg, recv)
                except Drop as exc:
                    self._drop("peer", exc.reason, str(exc))
                    continue
                except Exception as exc:  # never let one message take the node down
                    self._drop("peer", DropReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                    continue
                if len(waiting) > i + 1:
                    self.stats.inc("superseded.peer", len(waiting) - i - 1)
                break

    def _collect_latent(self, batch: dict, msg: LatentEmbedding, recv: int) -> None:
        if self.agent.is_own(msg.agent_id):  # our own shared latent (no content filter): before any work
            self.stats.inc("ignored.own")
            return
        self.stats.inc("received.peer")
        batch.setdefault((msg.agent_id, msg.target_id), []).append((conv.stamp_to_ns(msg.header.stamp), msg, recv))

    def _process_latent(self, msg: LatentEmbedding, recv: int) -> None:
        self.agent.screen_peer(msg.agent_id, msg.model_id, msg.format_version)
        try:
            data = conv.latent_from_msg(msg, self.bundle.modalities, self.bundle.latent_dim, self.bundle.feature_dim,
                                        len(self.bundle.class_names) if self.bundle.class_names else None)
        except conv.ConversionError as exc:
            raise drop_from(exc, DropReason.MISMATCH, f"latent from {msg.agent_id!r}: ") from None
        if self.agent.note_peer(data.agent_id, data.incarnation):  # a peer started or restarted: share what we hold
            self._resync(f"peer {data.agent_id!r} incarnation {data.incarnation}")
        out = self.agent.merge(data, self._now_s())
        if out is None:  # adds no evidence
            return
        self._publish(out)
        self.stats.inc("processed.peer")
        self.stats.inc("processed.total")
        self.stats.latency("peer", (time.perf_counter_ns() - recv) * 1e-9)

    def _check_readers(self) -> None:
        """More readers of the shared-latent topic than at the last check (a peer started or restarted): it gets every
        held belief now instead of at the next change. Polled from the diagnostics timer: rclpy 9.1.2 nodes under
        the EventsExecutor hung in ``deactivate`` when the publisher had a ``matched`` event callback."""
        n = self.pub_shared.get_subscription_count()
        now = time.monotonic()
        if n > self._readers:
            self._resync(f"{n - self._readers} new reader(s) of the shared topic", RESYNC_DELAY)
            # again later: the peer subscription is best effort, so a lost re-share would otherwise stay lost
            self._resync_again = [now + d for d in RESYNC_REPEATS]
        elif self._resync_again and now >= self._resync_again[0]:
            self._resync_again.pop(0)
            self._resync("repeat for new readers")
        self._readers = n

    def _check_own_readers(self) -> None:
        """A new reader of ``~/latent`` or ``~/belief`` gets every held belief (outputs are not built while nobody
        reads them, so one that matched after a belief's last change would otherwise wait for the next change).
        Published ``RESYNC_DELAY`` s after the reader was seen (the writer side may match first); polled from the
        diagnostics timer, on the thread that runs the callbacks."""
        now = time.monotonic()
        n = (self.pub_latent.get_subscription_count(), self.pub_belief.get_subscription_count())
        if any(a > b for a, b in zip(n, self._own_readers)):
            self._republish_at = now + RESYNC_DELAY
        self._own_readers = n
        if self._republish_at is None or now < self._republish_at:
            return
        self._republish_at = None
        outs = self.agent.held_outputs()
        for out in outs:
            self._publish(out)
        if outs:
            self.get_logger().info(f"re-published {len(outs)} belief(s) for new reader(s) of the node's outputs")

    def _resync(self, why: str, delay: float = 0.0) -> None:
        n = self.agent.resync(delay)
        if n and self._flusher is not None:
            self._flusher.poke()
            self.get_logger().info(f"re-sharing {n} belief(s): {why}")

    def _publish(self, out) -> None:
        """Publish the outputs; a message nobody subscribes to (no matched reader: it would go nowhere) is not
        built (``latent`` and ``belief``; the shared topic always is)."""
        shared = out.shared is not None and self.pub_shared is not None
        to_latent = self.pub_latent.get_subscription_count() > 0
        to_belief = out.belief is not None and self.pub_belief.get_subscription_count() > 0
        msg = self._writer.fill(out.latent) if (to_latent or shared or to_belief) else None
        if to_latent:
            self.pub_latent.publish(msg)
        if shared:
            self.pub_shared.publish(msg)
        elif self._flusher is not None and self.agent.config.share:
            self._flusher.poke()  # a throttled share waits: the flusher sends it when due
        if out.belief is None:
            if not self._head_warned:
                self._head_warned = True
                self.get_logger().warning("the bundle has no class-belief head: no ClassBelief is published")
            return
        if to_belief:
            self.pub_belief.publish(belief_msg(out.belief, msg))

    def _drop(self, source: str, reason: DropReason, message: str) -> None:
        reason = DropReason(reason)
        self.stats.inc(f"dropped.{source}.{reason}")
        self.stats.inc("dropped.total")
        key = (source, reason)
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= self.p["warn_throttle"]:
            self._warned[key] = now
            n = self.stats.get(f"dropped.{source}.{reason}")
            self.get_logger().warning(f"dropped {source} input ({reason}, {n} so far): {message}")

    def _on_reset(self, request, response):
        n = self.agent.reset() if self.agent is not None else 0
        self.stats.inc("resets")
        response.success = True
        response.message = f"cleared {n} belief(s)"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def _on_diag_timer(self) -> None:
        if self.pub_shared is not None:
            self._check_readers()
        self._check_own_readers()
        gone = self.agent.expire()
        if gone:
            self.get_logger().info(f"beliefs expired (ttl {self.agent.config.belief_ttl} s): {gone}")
        values = self.stats.snapshot()
        values.update(self.agent.store_stats())
        values.update(self.agent.peer_evidence_stats(self._now_s()))
        values["peers"] = len(self.agent.peers())
        values.update({f"novelty.{m}": round(v, 4) for m, v in dict(self.agent.novelty_last).items()})
        dropped = values.get("dropped.total", 0)
        last, self._last_dropped = self._last_dropped, dropped
        info = {"agent_id": self.agent_id, "model_id": self.bundle.model_id, "model_dir": self.bundle.path,
                "providers": ",".join(self.bundle.providers), "modalities": ",".join(self.modalities),
                "target": self.agent.current_target, "format_version": str(FORMAT_VERSION),
                "incarnation": str(self.agent.incarnation),
                "state": self.state_label, "own_filter": self.own_filter,
                "novelty_threshold": f"{self.agent.novelty_threshold:g}" if self.bundle.novelty.entries else "off"}
        level = DiagnosticStatus.WARN if dropped > last else DiagnosticStatus.OK
        msg = diagnostic_array(self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: fusion",
                               self.agent_id, values, info, level,
                               f"{values.get('processed.total', 0)} fused, {dropped} dropped "
                               f"({dropped - last} in the last period)")
        self.pub_diag.publish(msg)


def main(args=None) -> NoReturn:
    """Entry point ``fusion_node``: runs the node, then ends the process (:func:`m2vae_fusion.ros.spin.process_exit`)
    with exit status 0 after SIGINT/SIGTERM, 2 on a bad bundle or parameter."""
    process_exit(run_node(FusionNode, "fusion_node", "close", args))


if __name__ == "__main__":
    main()
