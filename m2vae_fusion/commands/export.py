"""``m2vae-fusion export``: write an ONNX model bundle, format v2 (docs/formats.md), and check its parity.

``--untrained`` exports randomly initialised networks (for testing the runtime and nodes before training);
``--run DIR`` exports the trained networks of a training run (the last stage of ``m2vae-fusion train``);
``--from-checkpoint FILE`` re-exports from the torch checkpoint an export saved beside its bundle
(``<bundle>.torch.pt``); ``--from-bundle DIR`` rebuilds a bundle (format v1 or v2, e.g. the shipped ones, which have
no checkpoints) from its own ONNX files without torch: the network files are kept byte for byte, the chain graphs,
probes and manifest are rewritten (``--out`` may be the same directory: that upgrades it in place).
"""
HELP = "export an ONNX model bundle (trained run, checkpoint, --untrained, or rebuilt --from-bundle) with parity check"


def configure(parser):
    parser.add_argument("--out", required=True, help="bundle directory to write, e.g. models/amiro")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--untrained", action="store_true", help="randomly initialised networks (default sensors)")
    src.add_argument("--run", metavar="DIR", help="training run directory holding checkpoints/ (see `train`)")
    src.add_argument("--from-checkpoint", metavar="FILE",
                     help="torch checkpoint saved by an earlier export beside its bundle (<bundle>.torch.pt)")
    src.add_argument("--from-bundle", metavar="DIR",
                     help="rebuild this bundle's chains and manifest from its ONNX files (no torch, no retraining)")
    parser.add_argument("--seed", type=int, help="seed of the random weights and probes (default: 0 for --untrained, "
                        "the run's config seed for --run)")
    parser.add_argument("--feature-dim", type=int, default=10, help="β-VAE latent size D_* (--untrained)")
    parser.add_argument("--latent-dim", type=int, default=10, help="M2VAE latent size D_z (--untrained)")


def run(args) -> int:
    from m2vae_fusion.errors import UserError

    if args.from_bundle:
        from m2vae_fusion.training.export import read_manifest, rebuild_bundle
        out = rebuild_bundle(args.from_bundle, args.out)
    elif args.from_checkpoint:
        from m2vae_fusion.training.export import export_from_checkpoint, read_manifest
        out = export_from_checkpoint(args.from_checkpoint, args.out)
    elif args.untrained:
        for name in ("feature_dim", "latent_dim"):
            if getattr(args, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        import torch

        from m2vae_fusion.training.export import export_untrained, read_manifest
        torch.set_num_threads(2)
        out = export_untrained(args.out, seed=args.seed if args.seed is not None else 0,
                               feature_dim=args.feature_dim, latent_dim=args.latent_dim)
    else:
        from m2vae_fusion.training.export import read_manifest
        from m2vae_fusion.training.trainer import export_run
        out = export_run(args.run, args.out, seed=args.seed)
    manifest = read_manifest(out)
    n_chains = sum(len(b) for b in manifest["chains"].values())
    print(f"wrote {out}: format_version {manifest['format_version']}, objective {manifest['objective']}, "
          f"model_id {manifest['model_id']}, {len(manifest['files'])} files ({n_chains} chain graphs), "
          f"parity within 1e-4")
    return 0
