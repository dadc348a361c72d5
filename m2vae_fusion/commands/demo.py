"""``m2vae-fusion demo``: the simulated multi-agent fusion demo (see m2vae_fusion.ros.demo)."""
HELP = "run the simulated world and one fusion node per agent; print who knows what, write JSON and a PNG"


def configure(parser) -> None:
    parser.add_argument("--agents", default="camera,lidar,reflectance",
                        help="comma-separated sensor rig per agent: 'all', 'camera', 'lidar+reflectance', … "
                             "(default: camera,lidar,reflectance, the paper's single-sensor agents)")
    parser.add_argument("--objects", default="all",
                        help="comma-separated class names of the objects in the world, or a number N (easy world: the "
                             "first N classes; hard world: N classes drawn by --seed from all 27), or 'all' (default: "
                             "the easy world's 8 classes, or 10 drawn hard-world classes)")
    parser.add_argument("--world", choices=("easy", "hard"), default=None,
                        help="simulated world (default: the one the bundle was trained on, recorded in its manifest; "
                             "easy for bundles that record none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world (object sizes, distances, noise)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of touring (default: until every agent inspected every object once)")
    parser.add_argument("--inspect-duration", type=float, default=4.0, help="seconds each agent inspects an object")
    parser.add_argument("--transit-duration", type=float, default=1.0, help="seconds between two objects")
    parser.add_argument("--no-exchange", action="store_true",
                        help="agents do not subscribe to each other's latents (the baseline)")
    parser.add_argument("--model-dir", default="", help="model bundle (default: the bundled models/amiro)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write beliefs over time and latent trajectories")
    parser.add_argument("--log-dir", help="where node logs and parameter files go (default: a temporary folder)")
    parser.add_argument("--record", metavar="BAG", help="also record the simulated sensors to a rosbag2 (mcap)")


def run(args) -> int:
    import os
    import sys

    from m2vae_fusion.errors import UserError
    from m2vae_fusion.files import write_json
    from m2vae_fusion.report import format_tables, plot, summarise
    from m2vae_fusion.ros.demo import DemoConfig, run_demo

    agents = [a for a in args.agents.split(",") if a.strip()]
    spec = args.objects.strip()
    objects, num_objects = None, None
    if spec == "all":
        pass  # the world's default tour (resolved once the bundle's world is known)
    elif spec.isdigit():
        num_objects = int(spec)
        if not 1 <= num_objects <= 64:
            raise UserError(f"--objects: a number must be 1..64, got {num_objects}")
    else:
        objects = [o.strip() for o in spec.split(",") if o.strip()]
    if args.duration is not None and args.duration <= 0:
        raise UserError(f"--duration must be positive, got {args.duration}")
    if args.inspect_duration <= 0 or args.transit_duration < 0:
        raise UserError("--inspect-duration must be positive and --transit-duration non-negative")
    for path in (args.json, args.plot):
        if path and not _writable(path):
            raise UserError(f"cannot write {path}: its folder does not exist or is not writable")
    if args.record and os.path.exists(args.record):
        raise UserError(f"--record: {args.record} already exists; choose a new bag path")
    cfg = DemoConfig(agents=agents, objects=objects, num_objects=num_objects, world=args.world, seed=args.seed, duration=args.duration,
                     exchange=not args.no_exchange, model_dir=args.model_dir, log_dir=args.log_dir,
                     record_bag=args.record, inspect_duration=args.inspect_duration,
                     transit_duration=args.transit_duration)
    try:
        rec = run_demo(cfg)
    except KeyboardInterrupt:  # SIGINT, SIGTERM or Ctrl-C on the process group: a requested stop, not a failure
        print("m2vae-fusion demo: stopped by a signal before the tour ended; every child process stopped, no report "
              "written", file=sys.stderr)
        return 0
    summary = summarise(rec)
    print()
    print(format_tables(summary))
    if args.json:
        write_json(args.json, summary)
        print(f"\nwrote {args.json}")
    if args.plot:
        mode = "with" if cfg.exchange else "without"
        plot(rec, args.plot, f"{len(agents)} agents ({', '.join(agents)}), {mode} latent exchange")
        print(f"wrote {args.plot}")
    return 0


def _writable(path: str) -> bool:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and os.access(folder, os.W_OK)
