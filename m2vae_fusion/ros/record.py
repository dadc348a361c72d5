"""Recording the agents' sensors into a rosbag2 bag with rclpy + ``rosbags`` (no ``ros2`` CLI needed).

:class:`BagRecorder` attaches to an rclpy node that someone else spins (the demo's monitor, or the
``m2vae-fusion record`` command's own node). It discovers topics periodically through the graph API
(``get_topic_names_and_types``): every ``sensor_msgs/Image``, ``LaserScan``, ``PointCloud2`` and
``m2vae_fusion_msgs/TargetOfInterest`` topic (optionally only under some namespaces) plus ``/sim/ground_truth``
(``std_msgs/String``) when it exists, or exactly the topics it is given. Each topic gets a raw (serialised)
subscription whose QoS follows its publishers (reliable only if every publisher is reliable, transient-local only if
every publisher is), and every message is written as received, stamped with the receive time (ns, the node's clock),
as ``ros2 bag record`` does. Message definitions come from a rosbags typestore (ROS 2 Kilted plus the
``m2vae_fusion_msgs`` .msg files, see :func:`m2vae_fusion.bags.typestore`), so the bag is self-describing
(mcap schemas) and readable by ``ros2 bag`` and by ``m2vae-fusion dataset --from-bag``.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import Callable, Iterable, Optional

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from m2vae_fusion.bags import CAMERA_INFO, CLOUD, GROUND_TRUTH_TOPIC, IMAGE, SCAN, STRING, TARGET, typestore
from m2vae_fusion.errors import UserError

#: message types recorded by discovery
RECORDED_TYPES = (IMAGE, SCAN, CLOUD, TARGET, CAMERA_INFO)
STORAGES = ("mcap", "sqlite3")


def _msg_class(type_name: str):
    """``"sensor_msgs/msg/Image"`` → the rclpy message class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _norm_ns(ns: str) -> str:
    ns = "/" + ns.strip().strip("/")
    return ns


def _in_namespaces(topic: str, namespaces) -> bool:
    return not namespaces or any(ns == "/" or topic.startswith(ns + "/") for ns in namespaces)


def adapted_qos(infos) -> QoSProfile:
    """Subscription QoS matching the publishers ``infos`` (rclpy TopicEndpointInfo): reliable only if all of them are
    reliable, transient-local only if all of them are (then deep enough for their stored history). The history is
    50 deep so that a briefly busy executor does not lose messages."""
    profiles = [i.qos_profile for i in infos]
    reliable = bool(profiles) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
    latched = bool(profiles) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    depth = 50
    if latched:
        depth = max([depth] + [int(p.depth) for p in profiles])
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def _bag_qos(infos) -> list:
    """The publishers' offered QoS profiles as rosbags ``Qos`` (stored in the bag's metadata like ros2 bag does);
    empty when they cannot be converted."""
    try:
        from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                        QosTime)

        def t(d):
            ns = int(d.nanoseconds)
            return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

        out = []
        for i in infos:
            p = i.qos_profile
            out.append(Qos(history=QosHistory(int(p.history)), depth=int(p.depth),
                           reliability=QosReliability(int(p.reliability)), durability=QosDurability(int(p.durability)),
                           deadline=t(p.deadline), lifespan=t(p.lifespan), liveliness=QosLiveliness(int(p.liveliness)),
                           liveliness_lease_duration=t(p.liveliness_lease_duration),
                           avoid_ros_namespace_conventions=bool(p.avoid_ros_namespace_conventions)))
        return out
    except Exception:
        return []


class BagRecorder:
    """Record topics seen by ``node`` into a new rosbag2 bag at ``path``.

    Args:
        node: an rclpy node that the caller spins (subscriptions and the discovery timer run in its executor).
        path: bag directory to create (must not exist).
        namespaces: with automatic discovery, only topics under these namespaces (e.g. ``["/agent0"]``);
            ``/sim/ground_truth`` is recorded whenever present.
        topics: record exactly these topics (types from the graph) instead of discovering.
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        discovery_period: seconds between graph look-ups.
        say: called with one line whenever a topic is added (None: silent).

    ``count`` is the number of messages written, ``counts`` the same per topic; ``close()`` (idempotent) stops
    recording and finalises the bag (metadata.yaml). Raises :class:`UserError` for a bad storage or an existing
    ``path``.
    """

    def __init__(self, node: Node, path: str, namespaces: Optional[Iterable[str]] = None,
                 topics: Optional[Iterable[str]] = None, storage: str = "mcap", discovery_period: float = 0.5,
                 say: Optional[Callable[[str], None]] = None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise UserError(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if os.path.exists(path):
            raise UserError(f"bag {path} exists already; choose a new path (bags are never overwritten)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UserError(f"cannot create bag {path}: folder {parent} does not exist or is not writable")
        self.node = node
        self.path = path
        self.namespaces = [_norm_ns(n) for n in (namespaces or []) if n.strip()]
        self.topics = [t if t.startswith("/") else "/" + t for t in (topics or []) if t.strip()]
        self.say = say
        self.count = 0
        self.counts: dict = {}
        self.types: dict = {}
        self.qos: dict = {}
        self._store = typestore()
        self._lock = threading.Lock()
        self._closed = False
        self._subs: dict = {}
        self._conns: dict = {}
        self._writer = Writer(path, version=9,
                              storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        try:
            self._writer.open()
        except Exception as exc:
            raise UserError(f"cannot create bag {path}: {exc}") from None
        self.storage = storage
        self._timer = node.create_timer(max(0.05, float(discovery_period)), self.discover)
        self.discover()

    # -- discovery ------------------------------------------------------------------------------------------------
    def _wanted(self, topic: str, types) -> Optional[str]:
        if self.topics:
            if topic not in self.topics:
                return None
            known = [t for t in types if t in self._store.fielddefs]
            return known[0] if known else None
        if topic == GROUND_TRUTH_TOPIC and STRING in types:
            return STRING
        if not _in_namespaces(topic, self.namespaces):
            return None
        for t in types:
            if t in RECORDED_TYPES:
                return t
        return None

    def discover(self) -> None:
        """Subscribe to every wanted topic that has a publisher now (called periodically by the timer)."""
        if self._closed:
            return
        try:
            graph = self.node.get_topic_names_and_types()
        except Exception:  # context shutting down
            return
        for topic, types in graph:
            if topic in self._subs:
                continue
            mtype = self._wanted(topic, types)
            if mtype is None:
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:  # wait for a publisher, whose QoS the subscription adapts to
                continue
            try:
                cls = _msg_class(mtype)
            except (ImportError, AttributeError, ValueError):
                continue  # a type this Python environment cannot subscribe to
            qos = adapted_qos(infos)
            with self._lock:
                if self._closed:
                    return
                conn = self._writer.add_connection(topic, mtype, typestore=self._store,
                                                   offered_qos_profiles=_bag_qos(infos))
                self._conns[topic] = conn
                self.counts[topic] = 0
                self.types[topic] = mtype
                self.qos[topic] = qos
            self._subs[topic] = self.node.create_subscription(
                cls, topic, lambda data, c=conn: self._on_message(c, data), qos, raw=True)
            if self.say is not None:
                self.say(f"recording {topic} ({mtype}, {qos.reliability.name.lower()}, "
                         f"{qos.durability.name.lower()})")

    def _on_message(self, conn, data: bytes) -> None:
        stamp = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self._writer.write(conn, stamp, data)
            self.count += 1
            self.counts[conn.topic] += 1

    # -- closing --------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop recording and write the bag's metadata (safe to call twice, also after rclpy shut down)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.close()
            finally:
                for sub in self._subs.values():
                    try:
                        self.node.destroy_subscription(sub)
                    except Exception:
                        pass
                try:
                    self.node.destroy_timer(self._timer)
                except Exception:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
