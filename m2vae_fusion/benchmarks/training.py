"""``m2vae-fusion bench training``: data generation rate and per-stage training throughput and wall time.

Two modes:

- measured (default): simulate ``--samples`` samples with the ``dataset`` command (its generator, ``--workers``
  processes; or use ``--data DIR``), then run the real training stages (:class:`m2vae_fusion.training.trainer.Run`:
  β-VAE per modality, M2VAE, head, export) with the default configuration (``config/train.yaml`` = the built-in
  defaults, or ``--config``) but only ``--epochs`` epochs per stage. Per stage it reports the measured time per epoch
  (from the trainer's ``metrics.jsonl``), samples/s, and the wall time **extrapolated** to the configuration's epochs:
  ``fixed + first epoch + (epochs − 1) × later epochs`` (epochs timed here between the start of the trainer's epoch
  loop and its per-epoch metrics records), linear in the number of training samples for
  ``--target-samples`` (a data set of that many samples, split like the measured one). The extrapolation assumes time
  linear in epochs and samples; it is labelled as such.
- ``--run DIR``: read a finished ``m2vae-fusion train`` run directory (``metrics.jsonl``, ``config.yaml``,
  ``dataset.json``): the real per-epoch times and wall time of every stage, nothing extrapolated; the export stage
  is timed by exporting the run's checkpoints again into a temporary directory.

samples/s counts data-set training samples per second of training (one epoch = every training sample once; the
head sees the latent of every modality subset of a sample, the M2VAE every subset's objective).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

from m2vae_fusion.benchmarks.common import OtherLoad, fmt, load_average, machine_info, table
from m2vae_fusion.files import write_result

HELP = "training: data generation samples/s, per-stage samples/s and wall time for the default configuration"

FULL = {"samples": 2000, "epochs": 2}
QUICK = {"samples": 40, "epochs": 1}


def configure(parser) -> None:
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['samples']} samples, {QUICK['epochs']} epoch per "
                                                              "stage (a smoke test; numbers are not meaningful)")
    parser.add_argument("--data", metavar="DIR", help="train on this data set instead of generating one")
    parser.add_argument("--samples", type=int, help=f"samples to generate (default {FULL['samples']})")
    parser.add_argument("--seed", type=int, default=7, help="data set seed (7, as the dataset command)")
    parser.add_argument("--world", choices=("hard", "easy"), default="hard",
                        help="simulated world to generate (hard, as the dataset command)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes (2, as the dataset command)")
    parser.add_argument("--epochs", type=int, help=f"epochs measured per stage (default {FULL['epochs']})")
    parser.add_argument("--config", help="training config YAML (default: the built-in defaults = config/train.yaml)")
    parser.add_argument("--target-samples", type=int, default=20000,
                        help="also extrapolate to a data set of this many samples (20000, the README's sim_20k)")
    parser.add_argument("--run", metavar="DIR", help="read this finished training run instead of training")
    parser.add_argument("--no-export", action="store_true", help="do not time the export stage")
    parser.add_argument("--keep", metavar="DIR", help="keep the generated data set and run directory here")


# -- metrics.jsonl ------------------------------------------------------------------------------------------------
def read_metrics(path: str) -> dict:
    """Per stage (``betavae/<modality>``, ``m2vae``, ``head``) the cumulative ``seconds`` after each epoch, in order.

    The trainer writes one JSON object per epoch: ``{"stage", "epoch", "seconds" (since the stage / modality
    started), …}`` (``modality`` for β-VAEs); the head's final record has ``"final": true`` and no epoch.
    """
    from m2vae_fusion.errors import UserError

    out: dict = {}
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing (no metrics of a training run)")
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "epoch" not in r or "seconds" not in r:
                continue
            key = f"betavae/{r['modality']}" if r.get("stage") == "betavae" else r.get("stage")
            rec = out.setdefault(key, {})
            rec[int(r["epoch"])] = float(r["seconds"])  # a resumed run rewrites epochs: keep the last
    return {k: [v[e] for e in sorted(v)] for k, v in out.items()}


def epoch_times(cumulative: list) -> list:
    """Cumulative seconds after each epoch → seconds of each epoch."""
    return [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]


def extrapolate(times: list, epochs: int) -> float:
    """Wall time of ``epochs`` epochs from measured epoch times: first epoch + (epochs − 1) × median later epoch."""
    import numpy as np

    if not times:
        return math.nan
    later = float(np.median(times[1:])) if len(times) > 1 else times[0]
    return times[0] + max(0, epochs - 1) * later


# -- measured mode ------------------------------------------------------------------------------------------------
def _generate(args, out_dir: str) -> dict:
    """The dataset command into ``out_dir`` (timed in process), and the generator alone in one process."""
    import numpy as np

    from m2vae_fusion.cli import main as cli_main
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.sim.generate import generate_samples, make_world

    t = time.perf_counter()
    world_name = getattr(args, "world", "hard") or "hard"
    code = cli_main(["dataset", "--world", world_name, "--out", out_dir, "--samples", str(args.samples), "--seed",
                     str(args.seed), "--workers", str(args.workers), "--no-progress", "--overwrite"])
    dt = time.perf_counter() - t
    if code != 0:
        raise UserError(f"the dataset command failed (exit {code})")
    from m2vae_fusion.sim import hard

    n1 = max(5, min(50, args.samples // 4))
    one = {}
    # both worlds' generators in one process, back to back: their ratio is the hard world's relative cost
    for name, build, gen in (("easy", make_world, lambda w, rng: generate_samples(n1, rng, w)),
                             ("hard", hard.make_world, lambda w, rng: hard.generate_samples(n1, rng, 4, w))):
        t = time.perf_counter()
        world = build(args.seed)
        t_world = time.perf_counter() - t
        try:
            t = time.perf_counter()
            gen(world, np.random.default_rng(args.seed))
            t_gen = time.perf_counter() - t
        finally:
            world.close()
        one[name] = {"samples": n1, "seconds": t_gen, "samples_per_s": n1 / t_gen, "world_build_seconds": t_world}
    return {"dataset_command": {"samples": args.samples, "workers": args.workers, "seconds": dt,
                                "samples_per_s": args.samples / dt, "world": world_name},
            "generator_one_process": dict(one[world_name], world=world_name),
            "generator_one_process_by_world": one,
            "hard_over_easy_time_per_sample": one["easy"]["samples_per_s"] / one["hard"]["samples_per_s"]}


def _measure(args, data_dir: str, run_dir: str) -> dict:
    import copy

    from m2vae_fusion.training import config as cfgmod
    from m2vae_fusion.training.trainer import Run

    os.environ.setdefault("M2VAE_NO_PROGRESS", "1")
    default = cfgmod.load_config(args.config)
    cfg = copy.deepcopy(default)
    cfg["betavae"]["epochs"] = args.epochs
    cfg["m2vae"]["epochs"] = args.epochs
    cfg["head"]["epochs"] = args.epochs
    cfg["betavae"]["min_steps"] = cfg["m2vae"]["min_steps"] = 0  # measure exactly --epochs epochs per stage
    cfg = cfgmod.validate(cfg)
    messages = []
    run = Run(run_dir, cfg, data_dir, log=messages.append)
    # the trainer logs one record at the end of every epoch, its "seconds" rounded to 10 ms; so the epochs are timed
    # here: the start of each epoch loop (the trainer wraps it in its progress bar) and the end of every epoch
    # (its metrics record). Without the progress hook, epoch 1 comes from the record.
    from m2vae_fusion.training import trainer as trainer_module

    ends: dict = {}
    starts: list = []
    progress = getattr(trainer_module, "_progress", None)

    def timed_progress(iterable, *a, **kw):
        starts.append(time.perf_counter())
        return progress(iterable, *a, **kw)
    log_metrics = run._log_metrics

    def timed_log(record):
        if "epoch" in record:
            key = f"betavae/{record['modality']}" if record.get("stage") == "betavae" else record.get("stage")
            ends.setdefault(key, []).append((time.perf_counter(), float(record.get("seconds", 0.0))))
        log_metrics(record)

    run._log_metrics = timed_log
    if progress is not None:
        trainer_module._progress = timed_progress
    t = time.perf_counter()
    meta, _, splits = run.data()
    t_load = time.perf_counter() - t
    walls = {}
    try:
        for stage, call in (("betavae", run.stage_betavae), ("m2vae", run.stage_m2vae), ("head", run.stage_head)):
            t = time.perf_counter()
            call()
            walls[stage] = time.perf_counter() - t
    finally:
        if progress is not None:
            trainer_module._progress = progress
    if not args.no_export:
        t = time.perf_counter()
        run.stage_export(os.path.join(run_dir, "bundle"), seed=int(cfg["seed"]))
        walls["export"] = time.perf_counter() - t
    train = splits["train"]
    present = {m: int(train.present[:, j].sum()) for j, m in enumerate(cfg["modalities"])}
    times = {}
    for k, v in ends.items():
        before = [t0 for t0 in starts if t0 < v[0][0]]
        first = v[0][0] - max(before) if before else v[0][1]
        times[k] = [first] + [b[0] - a[0] for a, b in zip(v[:-1], v[1:])]
    return {"default_config": default, "measured_config": cfg, "walls": walls, "data_load_seconds": t_load,
            "n_train": len(train), "n_total": int(sum(len(s) for s in splits.values())), "present": present,
            "epoch_times": times, "log": messages}


def _stage_rows(m: dict, source: str, target_train: int | None) -> dict:
    """Per-stage figures from measured walls + metrics (see module doc)."""
    from m2vae_fusion.training import config as cfgmod

    cfg = m["default_config"]
    mods = list(cfg["modalities"])
    walls = m["walls"]
    times_of = m.get("epoch_times") or {k: epoch_times(v) for k, v in m["metrics"].items()}
    scale = (target_train / m["n_train"]) if target_train else None
    stages = {}

    def add(name, times, n, default_epochs, fixed=0.0, wall=None, scales=True):
        steady = (sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]) if times else math.nan
        measured = sum(times) + fixed if wall is None else wall
        est = (extrapolate(times, default_epochs) + fixed) if times else fixed
        row = {"epochs_measured": len(times), "seconds_measured": measured, "first_epoch_seconds":
               times[0] if times else None, "seconds_per_epoch": steady if times else None,
               "fixed_seconds": fixed, "samples_per_epoch": n, "samples_per_s": (n / steady) if times and steady > 0
               else None, "default_epochs": default_epochs}
        if source == "measured":
            row["extrapolated_seconds"] = est
            if scale:
                row["extrapolated_seconds_target"] = est * scale if scales else est
        stages[name] = row

    bv_sum = 0.0
    for m_ in mods:
        times = times_of.get(f"betavae/{m_}", [])
        bv_sum += sum(times)
        add(f"betavae_{m_}", times, m["present"].get(m_, m["n_train"]), cfgmod.epochs_for(cfg, m_))
    if "betavae" in walls:  # the rest of the stage: feature cache (one pass over every split) and set-up
        add("betavae_features", [], m["n_total"], 0, fixed=max(0.0, walls["betavae"] - bv_sum))
    for st in ("m2vae", "head"):
        times = times_of.get(st, [])
        fixed = max(0.0, walls[st] - sum(times)) if st in walls else 0.0
        add(st, times, m["n_train"], int(cfg[st]["epochs"]), fixed=fixed)
    if "export" in walls:
        add("export", [], 0, 0, fixed=walls["export"], scales=False)  # independent of the data size
    return stages


def run(args) -> int:
    import shutil

    from m2vae_fusion.errors import UserError

    base = QUICK if args.quick else FULL
    for key, val in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)
    if args.samples <= 0 or args.epochs <= 0 or args.workers <= 0:
        raise UserError("--samples, --epochs and --workers must be positive")
    if args.target_samples is not None and args.target_samples <= 0:
        raise UserError("--target-samples must be positive")
    if args.data and not os.path.isfile(os.path.join(args.data, "metadata.json")):
        raise UserError(f"{args.data}: not a data set (no metadata.json)")
    t_begin = time.monotonic()
    others = OtherLoad().start()
    res = {"benchmark": "training", "format_version": 1, "machine": machine_info(),
           "load_average_start": load_average()}
    if res["load_average_start"][0] > 1.5:
        print(f"warning: load average {res['load_average_start'][0]} (1 min) on {os.cpu_count()} cores: other "
              "processes compete; the numbers will be pessimistic", file=sys.stderr)
    tmp = args.keep or tempfile.mkdtemp(prefix="m2vae_bench_training_")
    os.makedirs(tmp, exist_ok=True)
    try:
        if args.run:
            res.update(_from_run(args, tmp))
        else:
            data_dir = args.data
            res["data"] = {"dir": None, "generated": data_dir is None}
            if data_dir is None:
                data_dir = os.path.join(tmp, "data")
                print(f"[1/2] generating {args.samples} samples ({args.workers} workers) ...", flush=True)
                res["data"].update(_generate(args, data_dir))
            res["data"]["dir"] = os.path.abspath(data_dir)
            print(f"[2/2] training stages, {args.epochs} epoch(s) each ...", flush=True)
            m = _measure(args, data_dir, os.path.join(tmp, "run"))
            with open(os.path.join(data_dir, "metadata.json")) as f:
                splits = json.load(f).get("splits", {})
            total = sum(splits.values()) or m["n_total"]
            target_train = round(args.target_samples * m["n_train"] / total) if args.target_samples else None
            res["source"] = "measured"
            res["data"].update({"splits": splits, "train_samples": m["n_train"],
                                "data_load_seconds": m["data_load_seconds"]})
            res["config"] = {"config_file": args.config or "built-in defaults (= config/train.yaml)",
                             "epochs_measured": args.epochs, "threads": m["default_config"].get("threads"),
                             "target_samples": args.target_samples, "target_train_samples": target_train,
                             "default_epochs": {"betavae": m["default_config"]["betavae"]["epochs"],
                                                "m2vae": m["default_config"]["m2vae"]["epochs"],
                                                "head": m["default_config"]["head"]["epochs"]}}
            res["stages"] = _stage_rows(m, "measured", target_train)
            t_load = m["data_load_seconds"]
            load = {"epochs_measured": 0, "seconds_measured": t_load, "fixed_seconds": t_load,
                    "samples_per_epoch": m["n_total"], "samples_per_s": m["n_total"] / t_load,
                    "extrapolated_seconds": t_load}
            if args.target_samples:
                load["extrapolated_seconds_target"] = t_load * args.target_samples / m["n_total"]
            res["stages"] = {"data_load": load, **res["stages"]}
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    st = res["stages"]
    res["totals"] = {k: sum(r.get(k) or 0.0 for r in st.values())
                     for k in ("seconds_measured", "extrapolated_seconds", "extrapolated_seconds_target")
                     if any(k in r for r in st.values())}
    res["load_average_end"] = load_average()
    res["other_processes"] = others.stop()
    res["seconds"] = time.monotonic() - t_begin
    print(format_results(res))
    write_result(args.json, res)
    return 0


# -- run-directory mode -------------------------------------------------------------------------------------------
def _from_run(args, tmp: str) -> dict:
    import yaml

    from m2vae_fusion.errors import UserError
    from m2vae_fusion.training import config as cfgmod

    rd = args.run
    for name in ("config.yaml", "metrics.jsonl", "dataset.json"):
        if not os.path.isfile(os.path.join(rd, name)):
            raise UserError(f"{os.path.join(rd, name)}: missing; not a finished training run directory")
    with open(os.path.join(rd, "config.yaml")) as f:
        cfg = cfgmod.validate(yaml.safe_load(f) or {})
    with open(os.path.join(rd, "dataset.json")) as f:
        info = json.load(f)
    total = int((info.get("dataset") or {}).get("samples") or 0)
    n_train = None
    features = os.path.join(rd, "features.npz")
    if os.path.isfile(features):
        import numpy as np

        with np.load(features) as z:
            n_train = int(z["train/label"].shape[0])
            present = {m: int(z["train/present"][:, j].sum()) for j, m in enumerate(cfg["modalities"])}
    if n_train is None:
        raise UserError(f"{features}: missing; cannot tell the number of training samples")
    walls = {}
    if not args.no_export:
        from m2vae_fusion.training.trainer import export_run

        t = time.perf_counter()
        export_run(rd, os.path.join(tmp, "bundle"))
        walls["export"] = time.perf_counter() - t
    m = {"default_config": cfg, "walls": walls, "n_train": n_train, "n_total": total or n_train, "present": present,
         "metrics": read_metrics(os.path.join(rd, "metrics.jsonl"))}
    stages = _stage_rows(m, "run", None)
    return {"source": "run_metrics", "run": os.path.abspath(rd), "data": {"dir": info.get("data_dir"),
            "generated": False, "train_samples": n_train, "dataset": info.get("dataset")},
            "config": {"config_file": os.path.join(rd, "config.yaml"), "threads": cfg.get("threads"),
                       "default_epochs": {"betavae": cfg["betavae"]["epochs"], "m2vae": cfg["m2vae"]["epochs"],
                                          "head": cfg["head"]["epochs"]}},
            "stages": stages,
            "notes": "β-VAE feature caching is not in metrics.jsonl: not shown; export timed again here"}


# -- table --------------------------------------------------------------------------------------------------------
LABELS = {"data_load": "data loading + preprocessing", "betavae_camera": "β-VAE camera",
          "betavae_lidar": "β-VAE lidar", "betavae_reflectance": "β-VAE reflectance",
          "betavae_features": "β-VAE feature cache", "m2vae": "M2VAE", "head": "head (+ calibration)",
          "export": "export (ONNX + parity)"}


def format_results(res: dict) -> str:
    out = []
    d = res.get("data") or {}
    cfg = res.get("config") or {}
    head = (f"training benchmark ({res['source']}); load average at start {res['load_average_start']}; other "
            f"processes used {fmt((res.get('other_processes') or {}).get('other_cpu_percent'), 0)} % of one core on average during the "
            f"run; torch threads {cfg.get('threads')} for the β-VAEs, 1 for M2VAE and head")
    out.append(head)
    if d.get("dataset_command"):
        g = d["dataset_command"]
        rows = [[f"dataset command ({g.get('world', 'easy')} world), {g['workers']} workers", g["samples"],
                 fmt(g["seconds"], 1), fmt(g["samples_per_s"], 1)]]
        for name, g1 in (d.get("generator_one_process_by_world") or {"": d["generator_one_process"]}).items():
            rows.append([f"generator{' ' + name if name else ''}, 1 process (world built once)", g1["samples"],
                         fmt(g1["seconds"], 1), fmt(g1["samples_per_s"], 1)])
        title = "Data generation (PyBullet simulator)"
        if d.get("hard_over_easy_time_per_sample"):
            title += f"; hard / easy time per sample {d['hard_over_easy_time_per_sample']:.2f} (same run)"
        out.append(table(["data generation", "samples", "seconds", "samples/s"], rows, title))
    measured = res["source"] == "measured"
    tgt = cfg.get("target_samples")
    headers = ["stage", "epochs run", "s measured", "s/epoch", "samples/s", "config epochs"]
    if measured:
        headers += ["est. s (this data)"] + ([f"est. s ({tgt} samples)"] if tgt else [])
    rows = []
    for key, r in res["stages"].items():
        row = [LABELS.get(key, key), r["epochs_measured"] or "-", fmt(r["seconds_measured"], 1),
               fmt(r.get("seconds_per_epoch"), 2), fmt(r.get("samples_per_s"), 0), r.get("default_epochs") or "-"]
        if measured:
            row.append(fmt(r.get("extrapolated_seconds"), 1))
            if tgt:
                row.append(fmt(r.get("extrapolated_seconds_target"), 1))
        rows.append(row)
    t = res["totals"]
    total = ["total", "", fmt(t.get("seconds_measured"), 1), "", "", ""]
    if measured:
        total.append(fmt(t.get("extrapolated_seconds"), 0))
        if tgt:
            total.append(fmt(t.get("extrapolated_seconds_target"), 0))
    rows.append(total)
    if measured:
        title = (f"Training stages on {d.get('train_samples')} training samples, {cfg.get('epochs_measured')} epoch(s) "
                 f"each, default config otherwise; est. = extrapolated to the default epochs "
                 f"(first + (n-1) × later epochs + fixed), linear in samples"
                 + (f" for {tgt} samples ({cfg.get('target_train_samples')} training)" if tgt else ""))
    else:
        title = f"Training stages of the run {res.get('run')} ({d.get('train_samples')} training samples, measured)"
    out.append(table(headers, rows, title))
    if res.get("notes"):
        out.append(res["notes"])
    out.append(f"({res['seconds']:.0f} s)")
    return "\n\n".join(out)


def main(argv=None) -> int:
    from m2vae_fusion.benchmarks.common import main_for

    return main_for("m2vae_fusion.benchmarks.training", HELP, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
