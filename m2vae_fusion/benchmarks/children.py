"""Processes the runtime benchmark starts next to the fusion nodes (one role each, rclpy, no torch):

- ``feeder``: publishes camera images, LiDAR scans and reflectance scans to one or more agents' namespaces on a
  fixed schedule of segments (rates per stream, stamps = publish time), announces each agent's target of interest
  first, and writes how many messages it sent per segment and stream and how late it was against its schedule.
- ``echo``: the reference rclpy node of the headline figures: subscribes to the same sensor topics as a fusion
  node (best-effort, depth 1) in each of ``agents``' namespaces and answers every message with a LatentEmbedding on
  ``<ns>/latent`` carrying the input's header (receive → publish, no work); plain ``rclpy.spin``.
- ``pong``: echoes ``/bench_rt/ping`` (sensor_msgs/Image) to ``/bench_rt/pong``.
- ``ping``: sends an image, waits for its echo, repeats (per image size); writes the round-trip times.

Run as ``python -m m2vae_fusion.benchmarks.children --ros-args`` (e.g. with
:class:`m2vae_fusion.ros.harness.NodeProcess`) with ``M2VAE_BENCH_CHILD=<spec.json>`` in the environment; the spec
names the role, its parameters, and the files it writes (``ready_file`` once DDS has matched, ``result_file`` at
the end) or waits for (``go_file``: holds the wall-clock start time of the feeder's schedule).
"""
from __future__ import annotations

import json
import os
import sys
import time

ENV = "M2VAE_BENCH_CHILD"
PING_TOPIC, PONG_TOPIC = "/bench_rt/ping", "/bench_rt/pong"
TOPICS = {"camera": "camera/image_raw", "lidar": "scan", "reflectance": "reflectance"}


def _write(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _sleep_until(t_mono: float, rclpy, context=None) -> bool:
    """Sleep until monotonic ``t_mono`` in short steps; False when rclpy shut down (SIGTERM)."""
    while True:
        if not rclpy.ok(context=context):
            return False
        left = t_mono - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


def _wait_matched(pubs, rclpy, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and rclpy.ok():
        if all(p.get_subscription_count() >= 1 for p in pubs):
            return True
        time.sleep(0.05)
    return False


# -- feeder -----------------------------------------------------------------------------------------------------
def feeder(spec: dict, rclpy) -> int:
    import numpy as np
    from rclpy.node import Node
    from sensor_msgs.msg import Image, LaserScan

    from m2vae_fusion.benchmarks.inference import KINDS, messages
    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS

    with open(spec["manifest"]) as f:
        manifest = json.load(f)
    obs = dict(np.load(spec["obs"]))
    node = Node(spec.get("name", "bench_feeder"))
    kinds = sorted({s["kind"] for seg in spec["segments"] for s in seg["streams"]})
    msgs = {k: messages(obs, k, manifest) for k in kinds}
    pubs, toi_pubs = {}, {}
    for seg in spec["segments"]:
        for s in seg["streams"]:
            mod = KINDS[s["kind"]][0]
            key = (s["ns"], mod)
            if key not in pubs:
                pubs[key] = node.create_publisher(Image if mod == "camera" else LaserScan,
                                                  f"/{s['ns']}/{TOPICS[mod]}", SENSOR_QOS)
    for ns in spec["agents"]:
        toi_pubs[ns] = node.create_publisher(type(conv.target_msg("x", 0)), f"/{ns}/target_of_interest", RELIABLE_QOS)
    if not _wait_matched([*pubs.values(), *toi_pubs.values()], rclpy, float(spec.get("match_timeout", 60))):
        missing = [n.topic_name for n in [*pubs.values(), *toi_pubs.values()] if n.get_subscription_count() < 1]
        print(f"feeder: no subscriber on {missing}", file=sys.stderr)
        return 3
    _write(spec["ready_file"], {"pid": os.getpid()})
    while not os.path.exists(spec["go_file"]):
        if not rclpy.ok():
            return 0
        time.sleep(0.02)
    with open(spec["go_file"]) as f:
        t0_wall = float(json.load(f)["t0"])
    mono0 = time.monotonic() + (t0_wall - time.time())
    # the targets first (stamped before any observation), on the reliable topic
    # with the observed object's position in the base frame where the observations come with one (the crop's centre)
    pos = [float(v) for v in obs["target_position"]] if "target_position" in obs else None
    toi = {ns: conv.target_msg(spec["targets"][ns], time.time_ns() - 500_000_000, "base_link" if pos else "map",
                               position=pos) for ns in spec["agents"]}
    for ns, pub in toi_pubs.items():
        pub.publish(toi[ns])
    gap = float(spec.get("gap", 1.0))
    result = {"segments": []}
    t_seg = mono0
    index = {k: 0 for k in kinds}
    for seg in spec["segments"]:
        streams = seg["streams"]
        dur = float(seg["duration"])
        n = max(1, len(streams))
        period = [1.0 / float(s["rate"]) for s in streams]
        nxt = [t_seg + (i / n) * period[i] for i in range(len(streams))]
        sent = [0] * len(streams)
        missed = [0] * len(streams)
        late = []
        end = t_seg + dur
        while streams:
            i = min(range(len(streams)), key=nxt.__getitem__)
            t = nxt[i]
            if t >= end:
                break
            if not _sleep_until(t, rclpy):
                return 0
            now = time.monotonic()
            if now - t > period[i]:  # fell behind: skip the missed slots instead of bursting
                k = int((now - t) / period[i])
                missed[i] += k
                t += k * period[i]
            late.append(now - t)
            s = streams[i]
            kind = s["kind"]
            msg = msgs[kind][index[kind] % len(msgs[kind])]
            index[kind] += 1
            msg.header.stamp = conv.ns_to_stamp(time.time_ns())
            pubs[(s["ns"], KINDS[kind][0])].publish(msg)
            sent[i] += 1
            nxt[i] = t + period[i]
        lat = np.asarray(late) * 1e3 if late else np.zeros(1)
        result["segments"].append({
            "name": seg.get("name", ""), "duration": dur,
            "streams": [{**s, "sent": sent[i], "missed": missed[i], "rate_hz": sent[i] / dur}
                        for i, s in enumerate(streams)],
            "lateness_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                            "max": float(lat.max())}})
        for ns, pub in toi_pubs.items():  # repeated announcement (the node ignores repeats)
            pub.publish(toi[ns])
        t_seg = end + gap
    _write(spec["result_file"], result)
    node.destroy_node()
    return 0


# -- echo -------------------------------------------------------------------------------------------------------
def echo(spec: dict, rclpy) -> int:
    from m2vae_fusion_msgs.msg import LatentEmbedding
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from sensor_msgs.msg import Image, LaserScan

    from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS

    node = Node(spec.get("name", "bench_echo"))
    keep = []
    for ns in spec["agents"]:
        pub = node.create_publisher(LatentEmbedding, f"/{ns}/latent", RELIABLE_QOS)

        def answer(msg, mod, pub=pub, ns=ns):
            pub.publish(LatentEmbedding(header=msg.header, agent_id=ns, modalities=[mod],
                                        modality_stamps=[msg.header.stamp], modality_sources=[ns]))

        for mod, topic in TOPICS.items():
            keep.append(node.create_subscription(Image if mod == "camera" else LaserScan, f"/{ns}/{topic}",
                                                 lambda msg, mod=mod: answer(msg, mod), SENSOR_QOS))
        keep.append(node.create_subscription(type(_target_type()), f"/{ns}/target_of_interest", lambda m: None,
                                             RELIABLE_QOS))
    _write(spec["ready_file"], {"pid": os.getpid()})
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


def _target_type():
    from m2vae_fusion_msgs.msg import TargetOfInterest

    return TargetOfInterest()


# -- ping / pong ------------------------------------------------------------------------------------------------
def pong(spec: dict, rclpy) -> int:
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from m2vae_fusion.ros.harness import RELIABLE_QOS

    node = Node("bench_pong")
    pub = node.create_publisher(Image, PONG_TOPIC, RELIABLE_QOS)
    node.create_subscription(Image, PING_TOPIC, pub.publish, RELIABLE_QOS)
    _write(spec["ready_file"], {"pid": os.getpid()})
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


def ping(spec: dict, rclpy) -> int:
    import numpy as np
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.ros.harness import RELIABLE_QOS

    node = Node("bench_ping")
    got = {}
    node.create_subscription(Image, PONG_TOPIC, lambda m: got.__setitem__(m.header.frame_id, time.perf_counter()),
                             RELIABLE_QOS)
    pub = node.create_publisher(Image, PING_TOPIC, RELIABLE_QOS)
    deadline = time.monotonic() + float(spec.get("match_timeout", 30))
    while time.monotonic() < deadline and rclpy.ok():
        rclpy.spin_once(node, timeout_sec=0.05)
        if pub.get_subscription_count() >= 1 and node.count_publishers(PONG_TOPIC) >= 1:
            break
    else:
        print("ping: the pong process was not matched", file=sys.stderr)
        return 3
    cases = {}
    n, warm = int(spec["n"]), int(spec.get("warmup", 5))
    for w, h in spec["sizes"]:
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        msg = conv.rgb_to_image(rgb, "rgb8", 0, "")
        rtts, lost = [], 0
        for i in range(warm + n):
            key = f"{w}x{h}:{i}"
            msg.header.frame_id = key
            t = time.perf_counter()
            pub.publish(msg)
            end = t + float(spec.get("timeout", 2.0))
            while key not in got and time.perf_counter() < end and rclpy.ok():
                rclpy.spin_once(node, timeout_sec=0.01)
            if not rclpy.ok():
                return 0
            if key in got:
                if i >= warm:
                    rtts.append(got[key] - t)
            elif i >= warm:
                lost += 1
            time.sleep(0.005)
        cases[f"{w}x{h}"] = {"rtt_s": rtts, "lost": lost, "bytes": len(msg.data)}
    _write(spec["result_file"], {"cases": cases, "profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")})
    node.destroy_node()
    return 0


def main() -> int:
    import rclpy

    path = os.environ.get(ENV)
    if not path:
        print(f"children: set {ENV} to a spec file", file=sys.stderr)
        return 2
    with open(path) as f:
        spec = json.load(f)
    role = {"feeder": feeder, "ping": ping, "pong": pong, "echo": echo}.get(spec.get("role"))
    if role is None:
        print(f"children: unknown role {spec.get('role')!r} in {path}", file=sys.stderr)
        return 2
    rclpy.init(args=sys.argv)
    try:
        return role(spec, rclpy)
    except KeyboardInterrupt:
        return 0
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
