"""``m2vae-fusion eval BUNDLE --data DIR --json OUT [--ablation BUNDLE2] [--protocol paper|v2|both] [--plot PREFIX]``:
the paper's figures for a bundle (meta-sensor MLP, head accuracy per subset, in-place single-sensor fusion with the
runtime engine, z_diff, ELBO per subset) and protocol v2 (sampled latents, chains of K = 3, 10, 50 observations of
different samples of the same object in random sensor orders and with one sensor that keeps observing, in-place
minus direct-encoding accuracy, reconstruction R² against the class-mean baseline, within-class share of latent
variance); see :mod:`m2vae_fusion.training.evaluate`. Prints tables and writes the JSON (v2 under ``"v2"``). No
torch: onnxruntime and scikit-learn."""
HELP = "evaluate a bundle on a data set's test split (meta-sensor, subsets, in-place fusion, z_diff, ELBO)"


def configure(parser):
    parser.add_argument("bundle", help="bundle directory, e.g. models/amiro")
    parser.add_argument("--data", required=True, help="data set directory (its train and test splits are used)")
    parser.add_argument("--json", required=True, metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--ablation", metavar="BUNDLE", help="bundle trained without the re-encoding loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MLPs and the ELBO samples (default 0)")
    parser.add_argument("--reencode-steps", type=int, default=100, help="re-encodings for z_diff (default 100)")
    parser.add_argument("--elbo-samples", type=int, default=10, help="Monte-Carlo samples per ELBO (default 10)")
    parser.add_argument("--protocol", choices=("paper", "v2", "both"), default="both",
                        help="paper (FUSION 2019 figures), v2 (chains, information measures) or both (default)")
    parser.add_argument("--chain-lengths", default="3,10,50", help="v2: chain lengths K (default 3,10,50)")
    parser.add_argument("--plot", metavar="PREFIX",
                        help="also write PREFIX_embedding.png (Fig. 4) and PREFIX_zdiff.png (Fig. 5)")


def run(args) -> int:
    import os

    from m2vae_fusion.errors import UserError
    from m2vae_fusion.files import write_json

    if args.reencode_steps < 1 or args.elbo_samples < 1:
        raise UserError("--reencode-steps and --elbo-samples must be positive")
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data set directory")
    try:
        lengths = [int(k) for k in args.chain_lengths.split(",") if k.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise UserError(f"--chain-lengths must be positive integers, e.g. 3,10,50 (got {args.chain_lengths!r})")
    from m2vae_fusion.training.evaluate import evaluate, evaluate_v2, format_table, format_table_v2, plot_v2

    res = {}
    if args.protocol in ("paper", "both"):
        res = evaluate(args.bundle, args.data, args.ablation, seed=args.seed, elbo_samples=args.elbo_samples,
                       reencode_steps=args.reencode_steps)
        print(format_table(res))
    if args.protocol in ("v2", "both"):
        v2 = evaluate_v2(args.bundle, args.data, args.ablation, seed=args.seed, chain_lengths=lengths)
        print(format_table_v2(v2))
        res["v2"] = v2
        res.setdefault("seconds", 0.0)
        res["seconds"] = round(res["seconds"] + v2["seconds"], 1)
    if args.plot:
        for path in plot_v2(args.bundle, args.data, args.plot, seed=args.seed):
            print(f"wrote {path}")
    write_json(args.json, res)
    print(f"wrote {args.json} ({res['seconds']:.0f} s)")
    return 0
