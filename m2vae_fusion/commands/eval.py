"""``m2vae-fusion eval BUNDLE --data DIR --json OUT [--ablation BUNDLE2]``: the paper's figures for a bundle
(meta-sensor MLP, head accuracy per subset, in-place single-sensor fusion with the runtime engine, z_diff, ELBO per
subset; see :mod:`m2vae_fusion.training.evaluate`). Prints a table and writes the JSON."""
HELP = "evaluate a bundle on a data set's test split (meta-sensor, subsets, in-place fusion, z_diff, ELBO)"


def configure(parser):
    parser.add_argument("bundle", help="bundle directory, e.g. models/amiro")
    parser.add_argument("--data", required=True, help="data set directory (its train and test splits are used)")
    parser.add_argument("--json", required=True, metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--ablation", metavar="BUNDLE", help="bundle trained without the re-encoding loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MLPs and the ELBO samples (default 0)")
    parser.add_argument("--reencode-steps", type=int, default=100, help="re-encodings for z_diff (default 100)")
    parser.add_argument("--elbo-samples", type=int, default=10, help="Monte-Carlo samples per ELBO (default 10)")


def run(args) -> int:
    import json
    import os

    from m2vae_fusion.errors import UserError

    if args.reencode_steps < 1 or args.elbo_samples < 1:
        raise UserError("--reencode-steps and --elbo-samples must be positive")
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data set directory")
    from m2vae_fusion.training.evaluate import evaluate, format_table

    res = evaluate(args.bundle, args.data, args.ablation, seed=args.seed, elbo_samples=args.elbo_samples,
                   reencode_steps=args.reencode_steps)
    print(format_table(res))
    d = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(d, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.json} ({res['seconds']:.0f} s)")
    return 0
