"""``m2vae-fusion record``: record the agents' sensor topics and targets of interest into a rosbag2 bag (mcap by
default) with rclpy + rosbags, for ``m2vae-fusion dataset --from-bag`` (docs/retrain.md).

Without topics it discovers every sensor_msgs/Image, LaserScan, PointCloud2 and m2vae_fusion_msgs/TargetOfInterest
topic (under ``--namespace`` when given) plus /sim/ground_truth, every 0.5 s. It uses the DDS settings of the
environment (``ROS_DOMAIN_ID``, ``ROS_AUTOMATIC_DISCOVERY_RANGE``) as they are. Ctrl-C (also sent to the whole
process group by a launcher) or SIGTERM closes the bag cleanly and exits 0 without a traceback.

Shutdown order: rclpy's own signal handlers are not installed (they shut the context down from the signal handler
while the executor may be building its wait set: "failed to initialize wait set"); SIGINT / SIGTERM only set a stop
flag, the spin loop ends at its next turn (at most 0.1 s), then the bag is closed, the node destroyed and rclpy shut
down. Further signals during that sequence are ignored (the flag is set already).
"""
HELP = "record sensor topics and targets of interest into a rosbag2 bag (mcap) for `dataset --from-bag`"


def configure(parser) -> None:
    parser.add_argument("topics", nargs="*", metavar="TOPIC",
                        help="topics to record (default: discover sensor, TargetOfInterest and ground-truth topics)")
    parser.add_argument("--out", "-o", required=True, metavar="BAG", help="bag directory to create (must not exist)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C / SIGTERM)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="storage format (mcap)")
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="with discovery, only topics under this namespace (repeatable), e.g. /agent0")
    parser.add_argument("--labels-out", metavar="YAML",
                        help="after recording, write a labels file derived from /sim/ground_truth (simulated world)")
    parser.add_argument("--quiet", action="store_true", help="do not list the topics as they are found")


def run(args) -> int:
    import os
    import sys
    import time

    from m2vae_fusion.errors import UserError

    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration must be positive, got {args.duration}")
    if os.path.exists(args.out):
        raise UserError(f"bag {args.out} exists already; choose a new path (bags are never overwritten)")
    if args.labels_out:
        folder = os.path.dirname(os.path.abspath(args.labels_out))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"cannot write --labels-out {args.labels_out}: its folder does not exist or is not "
                            "writable")

    import signal
    import threading

    stop = {"signal": None}
    stopping = threading.Event()

    def on_signal(signum, _frame):  # only a flag: the main loop stops, then everything is closed in order
        if stop["signal"] is None:
            stop["signal"] = f"stopped by {signal.Signals(signum).name}"
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before the slow imports below; kept until the process exits, so
        signal.signal(sig, on_signal)            # a late signal never raises a traceback

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from m2vae_fusion.ros.record import BagRecorder

    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    rclpy.init(args=["m2vae_record"], signal_handler_options=SignalHandlerOptions.NO)
    node = None
    rec = None
    t0 = time.monotonic()
    try:
        node = rclpy.create_node("m2vae_record")
        domain = os.environ.get("ROS_DOMAIN_ID", "0")
        what = (" ".join(args.topics) if args.topics else
                "discovered sensor / target topics" + (f" under {', '.join(args.namespace)}" if args.namespace else ""))
        print(f"record: {what} -> {args.out} ({args.storage}), ROS_DOMAIN_ID={domain}"
              + (f", {args.duration:g} s" if args.duration else ", Ctrl-C to stop"), flush=True)
        rec = BagRecorder(node, args.out, namespaces=args.namespace, topics=args.topics, storage=args.storage,
                          say=say)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        t0 = time.monotonic()
        try:
            while not stopping.is_set() and rclpy.ok():
                if args.duration and time.monotonic() - t0 >= args.duration:
                    break
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):  # a context shut down by someone else
            stop["signal"] = stop["signal"] or "interrupted"
        finally:
            executor.shutdown(timeout_sec=1.0)  # the spin loop has ended: no wait set is being built any more
        if not rclpy.ok() and stop["signal"] is None:
            stop["signal"] = "stopped: ROS context shut down"
    finally:
        if rec is not None:
            rec.close()
        if node is not None:
            try:
                node.destroy_node()
            except Exception:
                pass
        rclpy.try_shutdown()
        # the bag is closed: later stop signals are ignored, also while the interpreter exits (Python resets its
        # own handlers to the default action at exit, and a second Ctrl-C arriving then killed the recorder
        # with -2 after the bag was closed; an ignored signal is left ignored)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    dt = time.monotonic() - t0
    print(f"record: {rec.count} messages on {len(rec.counts)} topics in {dt:.1f} s"
          + (f" ({stop['signal']})" if stop["signal"] else "") + f"; bag {args.out} closed")
    width = max((len(t) for t in rec.counts), default=0)
    for topic, n in sorted(rec.counts.items()):
        print(f"  {topic:<{width}}  {rec.types[topic]:<40} {n}")
    if rec.count == 0:
        print(f"record: nothing recorded. Are the publishers on ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')} "
              f"(ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')})?",
              file=sys.stderr)
        return 1
    if args.labels_out:
        from m2vae_fusion.bags import GROUND_TRUTH_TOPIC
        from m2vae_fusion.data.from_bag import ground_truth_labels, write_labels_file

        labels = ground_truth_labels(args.out)
        if labels is None:
            print(f"record: no {GROUND_TRUTH_TOPIC} recorded; no labels file written", file=sys.stderr)
        else:
            write_labels_file(args.labels_out, labels)
            print(f"record: wrote labels file {args.labels_out} ({len(labels.targets)} targets)")
    return 0
