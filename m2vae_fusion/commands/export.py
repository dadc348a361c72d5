"""``m2vae-fusion export``: write an ONNX model bundle (docs/formats.md: format v3 with latent bounds, v2 without) and
check its parity.

``--untrained`` exports randomly initialised networks (for testing the runtime and nodes before training);
``--run DIR`` exports the trained networks of a training run (the last stage of ``m2vae-fusion train``);
``--from-checkpoint FILE`` re-exports from the torch checkpoint an export saved beside its bundle
(``<bundle>.torch.pt``); ``--from-bundle DIR`` rebuilds a bundle (format v1 or v2, e.g. the shipped ones, which have
no checkpoints) from its own ONNX files without torch: the network files are kept byte for byte, the chain graphs,
probes and manifest are rewritten (``--out`` may be the same directory: that upgrades it in place).
``--bounds-data DATASET_DIR`` (with any source) records the latent ranges of the data set's train split in the
manifest (``latent_bounds``, format v3), computed through the bundle's ONNX networks (no torch); without it a
``--from-bundle`` rebuild keeps the source's bounds (if any) and the other sources write format v2 (no bounds).
``--unimodal-heads DATASET_DIR`` trains a class head per modality on the β-VAE features of the data set's train
split (val: temperature) and adds them to the bundle (manifest ``unimodal_heads``; torch needed;
:mod:`m2vae_fusion.training.unimodal`).
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
    parser.add_argument("--bounds-data", metavar="DATASET_DIR",
                        help="data set directory whose train split gives the latent bounds (format v3); "
                             "use the networks' training set")
    parser.add_argument("--novelty-data", metavar="DATASET_DIR",
                        help="data set directory whose --novelty-split calibrates the novelty score (manifest "
                             "\"novelty\" block: in-distribution intervals of the β-VAE ELBO terms and feature "
                             "densities; its train split fits the feature mixture); use held-out in-distribution data "
                             "of the networks' training distribution")
    parser.add_argument("--novelty-split", default="val", choices=("train", "val", "test"),
                        help="split of --novelty-data to calibrate on (default: val)")
    parser.add_argument("--novelty-statistics", default="kl,feature_mixture",
                        help="comma-separated novelty statistics to calibrate: kl, feature_distance, "
                             "feature_mixture, reconstruction_error (the last costs a β-VAE decoder run per "
                             "observation; default kl,feature_mixture)")
    parser.add_argument("--unimodal-heads", metavar="DATASET_DIR",
                        help="labelled data set directory: train a unimodal class head per modality on its train "
                             "split's β-VAE features (class evidence of the node; manifest \"unimodal_heads\")")
    parser.add_argument("--feature-dim", type=int, default=10, help="β-VAE latent size D_* (--untrained)")
    parser.add_argument("--latent-dim", type=int, default=10, help="M2VAE latent size D_z (--untrained)")


def run(args) -> int:
    from m2vae_fusion.errors import UserError

    import os

    bounds = args.bounds_data
    if bounds is not None and not os.path.isfile(os.path.join(bounds, "metadata.json")):
        raise UserError(f"{os.path.join(bounds, 'metadata.json')}: missing; --bounds-data must be a data set "
                        "directory (m2vae-fusion dataset --out)")
    if args.from_bundle:
        from m2vae_fusion.training.export import read_manifest, rebuild_bundle
        out = rebuild_bundle(args.from_bundle, args.out, bounds_data=bounds)
    elif args.from_checkpoint:
        from m2vae_fusion.training.export import export_from_checkpoint, read_manifest
        out = export_from_checkpoint(args.from_checkpoint, args.out, bounds_data=bounds)
    elif args.untrained:
        for name in ("feature_dim", "latent_dim"):
            if getattr(args, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        import torch

        from m2vae_fusion.training.export import export_untrained, read_manifest
        torch.set_num_threads(2)
        out = export_untrained(args.out, seed=args.seed if args.seed is not None else 0,
                               feature_dim=args.feature_dim, latent_dim=args.latent_dim, bounds_data=bounds)
    else:
        from m2vae_fusion.training.export import add_latent_bounds, read_manifest
        from m2vae_fusion.training.trainer import export_run
        out = export_run(args.run, args.out, seed=args.seed)
        if bounds is not None:
            add_latent_bounds(out, bounds)
    nov = args.novelty_data
    if nov is not None:
        if not os.path.isfile(os.path.join(nov, "metadata.json")):
            raise UserError(f"{os.path.join(nov, 'metadata.json')}: missing; --novelty-data must be a data set "
                            "directory (m2vae-fusion dataset --out)")
        from m2vae_fusion.training.export import add_novelty_calibration
        names = tuple(n.strip() for n in args.novelty_statistics.split(",") if n.strip())
        from m2vae_fusion.core.novelty import STATISTICS
        if not names or not set(names) <= set(STATISTICS):
            raise UserError(f"--novelty-statistics {args.novelty_statistics!r}: name one or more of {list(STATISTICS)}")
        add_novelty_calibration(out, nov, split=args.novelty_split, statistics=names)
    uni = args.unimodal_heads
    if uni is not None:
        if not os.path.isfile(os.path.join(uni, "metadata.json")):
            raise UserError(f"{os.path.join(uni, 'metadata.json')}: missing; --unimodal-heads must be a data set "
                            "directory (m2vae-fusion dataset --out)")
        import torch

        from m2vae_fusion.training.unimodal import add_unimodal_heads
        torch.set_num_threads(2)
        add_unimodal_heads(out, uni, seed=args.seed if args.seed is not None else 0)
    manifest = read_manifest(out)
    n_chains = sum(len(b) for b in manifest["chains"].values())
    print(f"wrote {out}: format_version {manifest['format_version']}, objective {manifest['objective']}, "
          f"model_id {manifest['model_id']}, {len(manifest['files'])} files ({n_chains} chain graphs), "
          f"parity within 1e-4")
    lb = manifest.get("latent_bounds")
    if lb is not None:
        import numpy as np

        lo, hi = np.asarray(lb["mean_min"]), np.asarray(lb["mean_max"])
        data = lb.get("data", {})
        print(f"  latent_bounds from {data.get('encodings')} subset encodings of {data.get('samples')} "
              f"{data.get('split')} samples: mean range width {np.min(hi - lo):.3g}..{np.max(hi - lo):.3g}, "
              f"|mean| ≤ {np.max(np.abs(np.r_[lo, hi])):.3g}, log_variance_min "
              f"{min(lb['log_variance_min']):.3g}..{max(lb['log_variance_min']):.3g}, margin "
              f"{lb['margin_fraction']:g}·range + {lb['margin_absolute']:g}")
    else:
        print("  no latent_bounds (format v2: outputs checked for finiteness only; add --bounds-data DATASET_DIR)")
    nb = manifest.get("novelty")
    if nb is not None:
        data = nb.get("data", {})
        print(f"  novelty calibrated on {data.get('samples')} {data.get('split')} samples for "
              f"{sorted(nb['modalities'])} (tail {nb['tail']:g} per side, threshold {nb['threshold']:g})")
    else:
        print("  no novelty calibration (nothing is ever novel; add --novelty-data DATASET_DIR)")
    return 0
