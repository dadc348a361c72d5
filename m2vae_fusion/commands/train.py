"""``m2vae-fusion train``: β-VAEs → M2VAE → class-belief head → ONNX bundle (Korthals et al., FUSION 2019).

Example (the bundled model): ``m2vae-fusion train --data data/sim_20k --out models/amiro``.
Checkpoints, cached features and ``metrics.jsonl`` go to ``--runs`` (default ``runs/<name of --out>``).
"""
HELP = "train β-VAEs, the M2VAE and the class-belief head on a data set, then export the bundle"

STAGES = ("betavae", "m2vae", "head", "export", "all")


def configure(parser):
    parser.add_argument("--data", help="data set directory (m2vae-fusion dataset --out DIR)")
    parser.add_argument("--out", required=True, help="bundle directory to write, e.g. models/amiro")
    parser.add_argument("--config", help="YAML config (default: the built-in defaults = config/train.yaml)")
    parser.add_argument("--stage", choices=STAGES, default="all", help="run one stage (default all, in order)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--resume", action="store_true", help="continue from the run's checkpoints")
    parser.add_argument("--runs", metavar="DIR", help="run directory (default runs/<name of --out>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set m2vae.alpha_reenc=0 (repeatable)")
    parser.add_argument("--init-betavae", metavar="RUN_DIR",
                        help="reuse the β-VAEs (checkpoints and features) of another run instead of training them")


def run(args) -> int:
    import json
    import os
    import shutil
    import time

    from m2vae_fusion.errors import UserError
    from m2vae_fusion.training import config as cfgmod

    overrides = list(args.set)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = cfgmod.load_config(args.config, overrides)
    if args.stage in ("betavae", "all") and not args.data and not args.init_betavae:
        raise UserError("--data is required to train the β-VAEs")
    if args.data and not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data set directory")
    name = os.path.basename(os.path.normpath(args.out)) or "model"
    run_dir = args.runs or os.path.join("runs", name)

    from m2vae_fusion.training.trainer import Run, run_stages

    os.makedirs(run_dir, exist_ok=True)
    if args.stage == "all" and not args.resume:
        for f in ("metrics.jsonl",):
            p = os.path.join(run_dir, f)
            if os.path.exists(p):
                os.remove(p)
    r = Run(run_dir, cfg, args.data, resume=args.resume)
    stages = ["betavae", "m2vae", "head", "export"] if args.stage == "all" else [args.stage]
    if args.init_betavae:
        src = args.init_betavae
        needed = [os.path.join(src, "checkpoints", f"betavae_{m}.pt") for m in cfg["modalities"]]
        needed += [os.path.join(src, "features.npz"), os.path.join(src, "dataset.json")]
        for p in needed:
            if not os.path.isfile(p):
                raise UserError(f"{p}: missing (--init-betavae needs a run whose betavae stage finished)")
        if os.path.abspath(src) != os.path.abspath(run_dir):
            for p in needed:
                dst = os.path.join(run_dir, "checkpoints" if p.endswith(".pt") else "", os.path.basename(p))
                shutil.copyfile(p, dst)
        stages = [s for s in stages if s != "betavae"]
        print(f"β-VAEs and features taken from {src}")
        if not r.standardization_matches():
            # the source run's features were made with another betavae.standardize: cache them again
            if not args.data:
                raise UserError(f"{src}: its β-VAE features were made with betavae.standardize="
                                f"{not cfg['betavae']['standardize']}; pass --data to compute them again, or "
                                f"--set betavae.standardize={str(not cfg['betavae']['standardize']).lower()}")
            _, sensors, splits = r.data()
            r.cache_features(sensors, splits)
    if "betavae" not in stages:
        r.write_config()
    t0 = time.time()
    figures = run_stages(r, stages, args.out)
    wall = time.time() - t0
    print(f"done in {wall:.0f} s; run directory {run_dir}" + (f", bundle {args.out}" if "export" in stages else ""))
    print(json.dumps(figures, indent=1, sort_keys=True, default=float))
    return 0
