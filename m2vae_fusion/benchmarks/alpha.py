"""``m2vae-fusion bench alpha``: the ``alpha_reenc`` trade-off (issue 10) — in-place accuracy after long chains of
sampled fusion steps vs how much information the latent keeps, over several training seeds.

For each ``alpha_reenc`` in ``--alphas`` (default 0, 0.1, 0.3, 1, 3) and each seed in ``--seeds`` (default 0, 1, 2)
it trains an M2VAE (and its head) with ``m2vae-fusion train`` on ``--data`` — the β-VAEs are trained once, by the
first run, and reused by every other run (``--init-betavae``), so the sweep isolates the M2VAE — and scores the
bundle with protocol v2 (:func:`m2vae_fusion.training.evaluate.evaluate_v2`) on the test split:

- ``in_place_k``: in-place accuracy after K (``--k``, default 50) sampled steps, random sensor orders and one
  sensor that keeps observing (each observation a different view of the object);
- ``gap_k``: that accuracy minus direct encoding of the same final evidence;
- ``within_class_share``: within-class share of the all-modality latent's variance (≈ 0: a class code);
- ``r2_gain``: mean over modalities of (R² of the feature decoded from the all-modality latent − R² of the
  per-class mean), > 0 when the latent keeps more than the class.

Per α: mean over seeds and a 95 % Student-t interval (``t_{0.975, n−1} · s / √n``). ``--plot`` draws in-place
accuracy against the within-class share, one point per α with both intervals (matplotlib).

Time: one training run per (α, seed) — with the default configuration on a 20k set about 7 minutes of M2VAE and
1.5 minutes of head on 2 cores (measured on a loaded machine). The budget options shorten it: ``--epochs N`` sets the
M2VAE's and the head's epochs (and the M2VAE's ``min_steps`` to 1), ``--samples N`` trains on the first whole
training shards holding at least N samples (a subset data set of symbolic links to the shards, the full validation and
test splits; scoring stays on the full test split). A progress bar counts the runs. Runs go to ``--runs`` (default
``runs/alpha``), bundles to ``--runs``/bundles (never ``models/``).
"""
from __future__ import annotations

import json
import math
import os
import time

HELP = "alpha_reenc sweep: in-place accuracy after K sampled steps vs latent information, seeds with 95 % intervals"

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def configure(parser):
    parser.add_argument("--data", required=True, help="data set (hard world, with --views >= 2)")
    parser.add_argument("--alphas", default="0,0.1,0.3,1,3", help="alpha_reenc values (default 0,0.1,0.3,1,3)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    parser.add_argument("--k", type=int, default=50, help="chain length K scored (default 50)")
    parser.add_argument("--runs", default=os.path.join("runs", "alpha"), help="run directory (default runs/alpha)")
    parser.add_argument("--config", help="training config YAML for every run (default: the built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training config override for every run (repeatable), e.g. m2vae.epochs=10")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="budget: M2VAE and head epochs per run (default: the config's)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help="budget: train on the first training shards holding >= N samples (default: all)")
    parser.add_argument("--init-betavae", metavar="RUN_DIR", help="reuse these β-VAEs (default: train them once)")
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--plot", metavar="OUT.png", help="plot the trade-off")


def interval(values) -> dict:
    """Mean and 95 % Student-t half-width of ``values`` (half-width NaN for fewer than 2 values)."""
    v = [float(x) for x in values if x == x]
    n = len(v)
    if n == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    mean = sum(v) / n
    if n < 2:
        return {"mean": mean, "ci95": float("nan"), "n": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return {"mean": mean, "ci95": T975.get(n - 1, 1.96) * sd / math.sqrt(n), "n": n}


def _floats(text: str, name: str):
    from m2vae_fusion.errors import UserError

    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 0:
        raise UserError(f"--{name} must be non-negative numbers separated by commas (got {text!r})")
    return out


def subset_dataset(src: str, dst: str, train_samples: int) -> int:
    """A data set at ``dst`` holding the first whole training shards of ``src`` with at least ``train_samples``
    samples and all of its validation and test shards: symbolic links to ``src``'s shard files (checked by sha256
    when read, as any shard) and a rewritten metadata.json. Returns the number of training samples kept.

    Raises:
        UserError: ``src`` is not a data set, or ``train_samples`` < 1.
    """
    from m2vae_fusion.data import shards as shardmod
    from m2vae_fusion.errors import UserError

    if train_samples < 1:
        raise UserError("--samples must be positive")
    meta = shardmod.read_metadata(src)
    keep, n = [], 0
    for e in meta["shards"]:
        if e["split"] == "train":
            if n >= train_samples:
                continue
            n += int(e["samples"])
        keep.append(e)
    os.makedirs(dst, exist_ok=True)
    for e in keep:
        link = os.path.join(dst, e["file"])
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(os.path.join(src, e["file"])), link)
    meta = dict(meta, shards=keep, splits=dict(meta.get("splits") or {}, train=n),
                subset_of=os.path.abspath(src))
    shardmod.write_metadata(dst, meta)
    return n


def summarise_run(v2: dict, k: int) -> dict:
    """The sweep's figures of one bundle from its :func:`evaluate_v2` result."""
    r = v2["bundle"]
    subsets = list(r["information"]["per_subset"])
    full = max(subsets, key=lambda s: len(s.split("+")))
    info = r["information"]["per_subset"][full]
    cm = r["information"]["r2_class_mean"]
    gain = sum(info["r2"][m] - cm[m] for m in cm) / max(len(cm), 1)
    out = {"within_class_share": info["within_class_share"], "r2_gain": gain,
           "z_diff_p95_after_50": r["z_diff"][full]["after_50"]["p95"], "elbo": r["elbo"][full]}
    for mode in ("random", "one_keeps"):
        c = r["chains"][mode][str(k)]
        out[f"in_place_k_{mode}"] = c["in_place"]
        out[f"gap_k_{mode}"] = c["gap"]
        out[f"direct_k_{mode}"] = c["direct"]
    return out


def run(args) -> int:
    import sys

    from m2vae_fusion.cli import main as cli_main
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.training.evaluate import evaluate_v2

    alphas = _floats(args.alphas, "alphas")
    seeds = [int(s) for s in _floats(args.seeds, "seeds")]
    if args.k < 1:
        raise UserError("--k must be positive")
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data set directory")
    os.makedirs(args.runs, exist_ok=True)
    data = args.data
    budget = []
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError("--epochs must be positive")
        budget = [f"m2vae.epochs={args.epochs}", f"head.epochs={args.epochs}", "m2vae.min_steps=1"]
    if args.samples is not None:
        data = os.path.join(args.runs, "data")
        kept = subset_dataset(args.data, data, args.samples)
        print(f"training on {kept} samples of {args.data} ({data})", flush=True)
    t0 = time.time()
    init = args.init_betavae
    runs = []
    from tqdm import tqdm

    bar = tqdm(total=len(alphas) * len(seeds), desc="alpha sweep runs", unit="run", dynamic_ncols=True,
               disable=os.environ.get("M2VAE_NO_PROGRESS") == "1")
    for a in alphas:
        for s in seeds:
            name = f"a{a:g}_s{s}"
            run_dir = os.path.join(args.runs, name)
            bundle = os.path.join(args.runs, "bundles", name)
            argv = ["train", "--data", data, "--out", bundle, "--runs", run_dir, "--seed", str(s),
                    "--set", f"m2vae.alpha_reenc={a}"]
            if args.config:
                argv += ["--config", args.config]
            for o in budget + list(args.set):
                argv += ["--set", o]
            if init:
                argv += ["--init-betavae", init]
            t = time.time()
            print(f"[alpha {a:g} seed {s}] train", flush=True)
            if cli_main(argv) != 0:
                raise UserError(f"training alpha_reenc={a} seed={s} failed (run directory {run_dir})")
            if not init:
                init = run_dir  # the first run's β-VAEs serve every other run
            v2 = evaluate_v2(bundle, data, seed=s, chain_lengths=(args.k,), log=lambda *_: None)
            row = {"alpha_reenc": a, "seed": s, "bundle": bundle, "seconds": round(time.time() - t, 1),
                   **summarise_run(v2, args.k)}
            runs.append(row)
            bar.update(1)
            bar.write(json.dumps(row))
    bar.close()
    keys = [k for k in runs[0] if k not in ("alpha_reenc", "seed", "bundle", "seconds")]
    table = []
    for a in alphas:
        rows = [r for r in runs if r["alpha_reenc"] == a]
        table.append({"alpha_reenc": a, **{k: interval([r[k] for r in rows]) for k in keys}})
    res = {"data": args.data, "train_data": data, "budget": {"epochs": args.epochs, "samples": args.samples},
           "k": args.k, "seeds": seeds, "alphas": alphas, "betavae_run": init,
           "runs": runs, "per_alpha": table, "seconds": round(time.time() - t0, 1)}
    print(format_table(res))
    from m2vae_fusion.files import write_result

    write_result(args.json, res)
    if args.plot:
        plot(res, args.plot)
        print(f"wrote {args.plot}")
    sys.stdout.flush()
    return 0


def format_table(res: dict) -> str:
    k = res["k"]
    lines = [f"alpha_reenc sweep, K={k} sampled steps, {len(res['seeds'])} seed(s), mean ± 95 % interval",
             f"{'alpha':>6}{'in-place random':>20}{'in-place one keeps':>21}{'gap (one keeps)':>19}"
             f"{'within-class':>17}{'R² gain':>17}"]

    def cell(d, w):
        return f"{d['mean']:.3f} ± {d['ci95']:.3f}".rjust(w)

    for row in res["per_alpha"]:
        lines.append(f"{row['alpha_reenc']:>6g}" + cell(row["in_place_k_random"], 20)
                     + cell(row["in_place_k_one_keeps"], 21) + cell(row["gap_k_one_keeps"], 19)
                     + cell(row["within_class_share"], 17) + cell(row["r2_gain"], 17))
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    panels = (("within_class_share", "within-class share of latent variance"),
              ("r2_gain", "R² gain over the class-mean baseline (mean over modalities)"),
              ("elbo", "ELBO of the all-modality subset (nats)"))
    for ax, (key, label) in zip(axes, panels):
        for row in res["per_alpha"]:
            if key not in row:
                continue
            x, y = row[key], row["in_place_k_one_keeps"]
            xe = 0 if x["ci95"] != x["ci95"] else x["ci95"]
            ye = 0 if y["ci95"] != y["ci95"] else y["ci95"]
            ax.errorbar(x["mean"], y["mean"], xerr=xe, yerr=ye, fmt="o", capsize=3)
            ax.annotate(f"α_re={row['alpha_reenc']:g}", (x["mean"], y["mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"in-place accuracy, K={res['k']} sampled steps (one sensor keeps observing)")
    fig.suptitle("alpha_reenc trade-off (mean ± 95 % interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
