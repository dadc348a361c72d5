"""``m2vae-fusion verify BUNDLE``: re-check a model bundle's sha256 sums, model id and probe parity
(onnxruntime on the stored probe inputs vs the stored torch outputs). Exit 1 naming the file on a mismatch,
2 when the directory is not a bundle."""
HELP = "check a model bundle's sums, model id and ONNX probe parity (exit 1 on mismatch)"


def configure(parser):
    parser.add_argument("bundle", help="bundle directory, e.g. models/amiro")
    parser.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")


def run(args) -> int:
    from m2vae_fusion.training.export import verify_bundle

    report = verify_bundle(args.bundle, tol=args.tol)
    worst = max(report["max_abs_diff"].values()) if report["max_abs_diff"] else 0.0
    print(f"{args.bundle}: OK model_id {report['model_id']}, {report['files']} files, "
          f"{len(report['max_abs_diff'])} networks, max abs diff {worst:.2e}")
    return 0
