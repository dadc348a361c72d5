"""``m2vae-fusion verify BUNDLE``: re-check a model bundle's sha256 sums, model id, probe parity (onnxruntime on the
stored probe inputs vs the stored torch outputs) and the parity of every chain graph with the per-network path, and
says where the latent bounds (format v3) come from.
Exit 1 naming the file on a mismatch, 2 when the directory is not a bundle (or of another format version)."""
HELP = "check a model bundle's sums, model id, ONNX probe parity and chain parity (exit 1 on mismatch)"


def configure(parser):
    parser.add_argument("bundle", help="bundle directory, e.g. models/amiro")
    parser.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")


def run(args) -> int:
    from m2vae_fusion.training.export import verify_bundle

    report = verify_bundle(args.bundle, tol=args.tol)
    diffs = report["max_abs_diff"]
    chain = report["chain_vs_networks"]
    nets = {k: v for k, v in diffs.items() if k not in chain}
    print(f"{args.bundle}: OK format_version {report['format_version']}, objective {report['objective']}, "
          f"model_id {report['model_id']}, {report['files']} files")
    print(f"  networks vs stored torch outputs: {len(nets)} files, max abs diff {max(nets.values(), default=0):.2e}")
    print(f"  chains vs stored per-network outputs: {len(chain)} files, max abs diff "
          f"{max((diffs[k] for k in chain), default=0):.2e}")
    print(f"  chains vs per-network path now (random inputs): max abs diff {max(chain.values(), default=0):.2e}")
    lb = report.get("latent_bounds")
    if lb is None:
        print("  latent_bounds: none (format v2: outputs checked for finiteness only, no range check or precision cap)")
    else:
        data = lb.get("data") or {}
        ds = data.get("dataset") or {}
        print(f"  latent_bounds: from {data.get('encodings')} subset encodings of {data.get('samples')} "
              f"{data.get('split')} samples (data set {ds.get('dir')}, seed {ds.get('seed')}), margin "
              f"{lb['margin_fraction']:g}·range + {lb['margin_absolute']:g}; covered by the model_id")
    return 0
