"""``m2vae-fusion export``: write an ONNX model bundle (docs/formats.md) and check ONNX/torch parity.

``--untrained`` exports randomly initialised networks (for testing the runtime and nodes before training);
``--run DIR`` exports the trained networks of a training run (the last stage of ``m2vae-fusion train``).
"""
HELP = "export an ONNX model bundle (trained run or --untrained) with parity check"


def configure(parser):
    parser.add_argument("--out", required=True, help="bundle directory to write, e.g. models/amiro")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--untrained", action="store_true", help="randomly initialised networks (default sensors)")
    src.add_argument("--run", metavar="DIR", help="training run directory holding checkpoints/ (see `train`)")
    parser.add_argument("--seed", type=int, help="seed of the random weights and probes (default: 0 for --untrained, "
                        "the run's config seed for --run)")
    parser.add_argument("--feature-dim", type=int, default=10, help="β-VAE latent size D_* (--untrained)")
    parser.add_argument("--latent-dim", type=int, default=10, help="M2VAE latent size D_z (--untrained)")


def run(args) -> int:
    from m2vae_fusion.errors import UserError

    if args.untrained:
        for name in ("feature_dim", "latent_dim"):
            if getattr(args, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        import torch

        from m2vae_fusion.training.export import export_untrained, read_manifest
        torch.set_num_threads(2)
        out = export_untrained(args.out, seed=args.seed if args.seed is not None else 0, feature_dim=args.feature_dim, latent_dim=args.latent_dim)
    else:
        from m2vae_fusion.training.export import read_manifest
        from m2vae_fusion.training.trainer import export_run
        out = export_run(args.run, args.out, seed=args.seed)
    manifest = read_manifest(out)
    print(f"wrote {out}: model_id {manifest['model_id']}, {len(manifest['files'])} files, parity within 1e-4")
    return 0
