"""Per-observation latency of the fusion node (receive → publish), per input: camera, LiDAR (LaserScan and
PointCloud2), reflectance and peer latents.

Starts two fusion nodes as processes (``/bench_scan``: all sensors with LaserScan; ``/bench_cloud``: LiDAR as
PointCloud2), first fills one belief per node with every modality, then sends one input kind at a time at its rate
and reads the node's own receive → publish latency percentiles from ``/diagnostics``. It also records the end-to-end
time from ``publish()`` here to the LatentEmbedding arriving here (DDS both ways included).

Usage: ``python -m m2vae_fusion.benchmarks.latency [--model-dir DIR] [--seconds 10] [--json OUT]``; also a
``m2vae-fusion bench`` sub-command module (``HELP``, ``configure``, ``run``). Without ``--model-dir`` it uses the
installed/repository bundle ``models/amiro``. It imports no torch and no training code: the bundle is read with
onnxruntime (:class:`m2vae_fusion.core.bundle.Bundle`), the inputs are made with numpy. Set
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID first (it sets LOCALHOST and a domain from its process
id when they are unset).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

HELP = "latency of the fusion node per input (camera, lidar scan/cloud, reflectance, peer latents)"


def configure(parser) -> None:
    parser.add_argument("--model-dir", help="bundle directory (default: the installed or repository models/amiro)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per input kind (default 10)")
    parser.add_argument("--camera-size", default="320x240", help="published image size WxH (default 320x240)")
    parser.add_argument("--camera-rate", type=float, default=15.0)
    parser.add_argument("--lidar-rate", type=float, default=10.0)
    parser.add_argument("--reflectance-rate", type=float, default=10.0)
    parser.add_argument("--peer-rate", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the nodes")
    parser.add_argument("--fastdds-profile", action="store_true",
                        help="run with config/fastdds_shm.xml (16 MiB shared memory segment)")
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--log-dir", help="node logs (default: a temporary directory)")


def _bundle(args, tmp=None):
    """(bundle directory, origin): ``--model-dir``, else the installed/repository ``models/amiro``.

    Raises:
        UserError: the directory has no manifest.json (exit status 2, naming the path).
    """
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.paths import default_bundle_path

    path, origin = (os.path.abspath(args.model_dir), "given") if args.model_dir else \
        (default_bundle_path(), "installed")
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        raise UserError(f"no model bundle in {path} (no manifest.json); give --model-dir DIR "
                        "(a bundle written by m2vae-fusion export)")
    return path, origin


def run(args) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    if args.fastdds_profile:
        from m2vae_fusion.paths import share_path

        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = share_path("config", "fastdds_shm.xml")
    import numpy as np
    import rclpy
    from m2vae_fusion_msgs.msg import LatentEmbedding
    from sensor_msgs.msg import Image, LaserScan, PointCloud2

    from m2vae_fusion.core import messages as conv
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.ros.harness import RELIABLE_QOS, SENSOR_QOS, NodeProcess, Probe

    try:
        w, h = (int(v) for v in args.camera_size.lower().split("x"))
    except ValueError:
        raise UserError(f"--camera-size must be WxH, got {args.camera_size!r}") from None
    tmp = tempfile.mkdtemp(prefix="m2vae_latency_")
    logs = args.log_dir or os.path.join(tmp, "logs")
    model_dir, origin = _bundle(args, tmp)
    bundle = Bundle.load(model_dir)
    lidar_cfg = bundle.input_config("lidar")
    k = int(bundle.input_config("reflectance")["beams"])
    rng = np.random.default_rng(0)
    n_each = {m: max(5, int(args.seconds * r)) for m, r in
              (("camera", args.camera_rate), ("lidar", args.lidar_rate), ("cloud", args.lidar_rate),
               ("reflectance", args.reflectance_rate), ("peer", args.peer_rate))}
    common = {"model_dir": model_dir, "diagnostics_period": 0.25, "ort_threads": args.threads,
              "latency_window": max(n_each.values()) + 10, "max_message_age": 5.0}

    rclpy.init()
    probe = Probe("latency_bench")
    procs = {}
    results = {"bundle": {"path": model_dir, "origin": origin, "model_id": bundle.model_id,
                          "latent_dim": bundle.latent_dim, "feature_dim": bundle.feature_dim},
               "camera_size": [w, h], "seconds_per_input": args.seconds, "threads": args.threads,
               "fastdds_profile": bool(args.fastdds_profile), "inputs": {}}
    try:
        procs["scan"] = NodeProcess("m2vae_fusion.ros.fusion_node", "/bench_scan", {**common, "agent_id": "bench_scan"},
                                    logs)
        procs["cloud"] = NodeProcess("m2vae_fusion.ros.fusion_node", "/bench_cloud",
                                     {**common, "agent_id": "bench_cloud", "modalities": ["lidar"],
                                      "lidar_type": "PointCloud2", "shared_latent_topic": ""}, logs)
        for ns in ("bench_scan", "bench_cloud"):
            probe.subscribe(f"/{ns}/latent", LatentEmbedding)
            if probe.diagnostics(f"/{ns}/fusion_node", timeout=60) is None:
                raise UserError(f"fusion node /{ns} did not start:\n{procs[ns.split('_')[1]].log()[-2000:]}")

        def image():
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            return conv.rgb_to_image(rgb, "rgb8", probe.now_ns(), "camera")

        def scan():
            r = rng.uniform(0.2, 4.0, int(lidar_cfg["beams"])).astype(np.float32)
            return conv.ranges_to_scan(r, lidar_cfg, probe.now_ns(), "laser")

        def cloud():
            r = rng.uniform(0.2, 4.0, int(lidar_cfg["beams"]))
            pts = conv.scan_to_points(r, lidar_cfg["angle_min"], lidar_cfg["angle_increment"])
            return conv.xyz_to_pointcloud2(pts, probe.now_ns(), "laser")

        def reflectance():
            return conv.ranges_to_scan(rng.uniform(0.05, 0.5, k), {"range_max": 0.8}, probe.now_ns(), "ir",
                                       intensities=rng.uniform(0, 1, k))

        def peer():
            stamp = probe.now_ns()
            data = conv.LatentData(agent_id="bench_peer", target_id="bench_target", model_id=bundle.model_id,
                                   stamp_ns=stamp, modalities=("lidar",), modality_stamps_ns=(stamp,),
                                   modality_sources=("bench_peer",), contributors=("bench_peer",),
                                   mean=bundle.sample_latents(rng)[0],  # within the latent bounds
                                   log_variance=-np.ones(bundle.latent_dim, np.float32), frame_id="map")
            return conv.latent_to_msg(data)

        inputs = {  # name: (namespace, topic, type, qos, factory, diagnostics source, rate)
            "camera": ("bench_scan", "camera/image_raw", Image, SENSOR_QOS, image, "camera", args.camera_rate),
            "lidar": ("bench_scan", "scan", LaserScan, SENSOR_QOS, scan, "lidar", args.lidar_rate),
            "reflectance": ("bench_scan", "reflectance", LaserScan, SENSOR_QOS, reflectance, "reflectance",
                            args.reflectance_rate),
            "cloud": ("bench_cloud", "scan", PointCloud2, SENSOR_QOS, cloud, "lidar", args.lidar_rate),
            "peer": ("bench_scan", None, LatentEmbedding, RELIABLE_QOS, peer, "peer", args.peer_rate),
        }
        for ns in ("bench_scan", "bench_cloud"):
            toi = conv.target_msg("bench_target", probe.now_ns() - 1_000_000, "map")
            probe.wait_subscribers(f"/{ns}/target_of_interest", type(toi), RELIABLE_QOS)
            probe.publish(f"/{ns}/target_of_interest", toi)
        for name, (ns, topic, mtype, qos, make, _, _) in inputs.items():
            full = "/m2vae/latents" if topic is None else f"/{ns}/{topic}"
            if not probe.wait_subscribers(full, mtype, qos):
                raise UserError(f"no subscriber on {full}")
        time.sleep(0.5)
        # warm up: every modality in the belief, so each observation decodes the other slots (the steady state)
        for name in ("camera", "lidar", "reflectance", "cloud"):
            ns, topic, mtype, qos, make, _, _ = inputs[name]
            for _ in range(3):
                probe.publish(f"/{ns}/{topic}", make(), qos)
                time.sleep(0.15)
        time.sleep(0.5)
        for name, (ns, topic, mtype, qos, make, source, rate) in inputs.items():
            full = "/m2vae/latents" if topic is None else f"/{ns}/{topic}"
            before = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=5) or {}
            n0 = before.get(f"latency_samples.{source}", 0)
            sent = {}
            t_next = time.monotonic()
            for _ in range(n_each[name]):
                msg = make()
                stamp = conv.stamp_to_ns(msg.header.stamp)
                sent[stamp - stamp % 1000] = time.monotonic()
                probe.publish(full, msg, qos)
                t_next += 1.0 / rate
                time.sleep(max(0.0, t_next - time.monotonic()))
            time.sleep(1.0)
            vals = probe.diagnostics(f"/{ns}/fusion_node", after=time.monotonic(), timeout=5) or {}
            n = vals.get(f"latency_samples.{source}", 0) - n0
            e2e = []
            for t_recv, lat in probe.received[f"/{ns}/latent"]:
                s = conv.stamp_to_ns(lat.header.stamp)
                if s in sent:
                    e2e.append((t_recv - sent.pop(s)) * 1e3)
            results["inputs"][name] = {
                "sent": n_each[name], "fused": n, "rate_hz": rate,
                "node_ms": {q: vals.get(f"latency_ms.{source}.{q}") for q in ("p50", "p90", "p99", "max")},
                "end_to_end_ms": ({"p50": float(np.percentile(e2e, 50)), "p99": float(np.percentile(e2e, 99)),
                                   "n": len(e2e)} if e2e else None),
                "superseded": vals.get(f"superseded.{source}", 0), "dropped": vals.get("dropped.total", 0),
            }
    finally:
        for p in procs.values():
            p.stop()
        probe.close()
        rclpy.try_shutdown()
    print(format_results(results))
    from m2vae_fusion.files import write_result

    write_result(args.json, results)
    return 0


def format_results(res: dict) -> str:
    b = res["bundle"]
    lines = [f"bundle: {b['origin']} {b['path']} (model_id {b['model_id']}, D*={b['feature_dim']}, "
             f"Dz={b['latent_dim']}); camera {res['camera_size'][0]}x{res['camera_size'][1]} rgb8; "
             f"onnxruntime threads {res['threads']}; Fast DDS profile {'on' if res['fastdds_profile'] else 'off'}",
             f"{'input':<12}{'rate Hz':>8}{'sent':>6}{'fused':>7}{'node p50':>10}{'p90':>8}{'p99':>8}{'max':>8}"
             f"{'e2e p50':>9}{'e2e p99':>9}   (ms; node = receive → publish inside the node)"]
    for name, r in res["inputs"].items():
        nm = r["node_ms"]
        e2e = r["end_to_end_ms"] or {}

        def f(v):
            return f"{v:.2f}" if isinstance(v, (int, float)) else "-"

        label = {"lidar": "lidar scan", "cloud": "lidar cloud"}.get(name, name)
        lines.append(f"{label:<12}{r['rate_hz']:>8.0f}{r['sent']:>6}{r['fused']:>7}{f(nm['p50']):>10}{f(nm['p90']):>8}"
                     f"{f(nm['p99']):>8}{f(nm['max']):>8}{f(e2e.get('p50')):>9}{f(e2e.get('p99')):>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    from m2vae_fusion.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m m2vae_fusion.benchmarks.latency", description=HELP)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"latency: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
