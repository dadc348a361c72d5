"""``m2vae-fusion bench NAME``: benchmarks, one sub-command each.

To add one, put an entry in :data:`BENCHMARKS`: ``name -> "package.module"`` where the module defines ``HELP``,
``configure(parser)`` (stdlib only) and ``run(args) -> int`` like a command module, or ``name -> (HELP, configure,
run)``. A module entry whose module does not exist (yet) is not listed. ``bench mog`` (the paper's
Mixture-of-Gaussians, Table I) is defined here.
"""
import importlib

HELP = ("benchmarks: runtime (node latency, sizes, rates, scaling), training (throughput), mog (FUSION 2019 Table I), "
        "reliability (fuzz, restart, packet loss, soak, stops)")

MOG_HELP = "bimodal Mixture-of-Gaussians (FUSION 2019 Sec. IV/V-A, Table I): naive Bayes on raw vs M2VAE embeddings"


def _mog_configure(parser):
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="M2VAE epochs (default from m2vae_fusion.training.mog)")
    parser.add_argument("--samples-per-class", type=int, help="training and test samples per class")
    parser.add_argument("--alpha", type=float, help="weight of the mutual KL terms")
    parser.add_argument("--alpha-reenc", type=float, help="weight of the re-encoding loss (default 0)")
    parser.add_argument("--beta-norm", type=float, help="β_norm")


def _mog_run(args) -> int:
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.files import write_result
    from m2vae_fusion.training.mog import format_table, run_benchmark

    over = {"seed": args.seed}
    for name, key in (("epochs", "epochs"), ("alpha", "alpha"), ("alpha_reenc", "alpha_reenc"),
                      ("beta_norm", "beta_norm")):
        v = getattr(args, name)
        if v is not None:
            if v < 0 or (name == "epochs" and v == 0):
                raise UserError(f"--{name.replace('_', '-')} must be {'positive' if name == 'epochs' else '≥ 0'}")
            over[key] = v
    if args.samples_per_class is not None:
        if args.samples_per_class <= 0:
            raise UserError("--samples-per-class must be positive")
        over["n_train_per_class"] = over["n_test_per_class"] = args.samples_per_class
    res = run_benchmark(over)
    print(format_table(res))
    print(f"({res['seconds']['total']:.0f} s)")
    write_result(args.json, res)
    return 0


#: name -> module path or (HELP, configure, run)
BENCHMARKS = {
    "mog": (MOG_HELP, _mog_configure, _mog_run),
    "runtime": "m2vae_fusion.benchmarks.runtime",
    "training": "m2vae_fusion.benchmarks.training",
    "chain": "m2vae_fusion.benchmarks.chain",
    "alpha": "m2vae_fusion.benchmarks.alpha",
    "reliability": "m2vae_fusion.benchmarks.reliability",
    "belief": "m2vae_fusion.benchmarks.belief",
    "baselines": "m2vae_fusion.benchmarks.baselines",
}


def _entry(spec):
    """(HELP, configure, run) of an entry, or None for a module path whose module does not exist."""
    if isinstance(spec, str):
        try:
            mod = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is not None and spec.startswith(exc.name):
                return None
            raise
        return mod.HELP, mod.configure, mod.run
    return spec


def configure(parser):
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    for name, spec in BENCHMARKS.items():
        entry = _entry(spec)
        if entry is None:
            continue
        help_, conf, run_ = entry
        # argparse %-formats help (not description): "95 % intervals" would read as a "% i" conversion
        p = sub.add_parser(name, help=help_.replace("%", "%%"), description=help_)
        conf(p)
        p.set_defaults(_bench_run=run_)


def run(args) -> int:
    return args._bench_run(args)
