"""``m2vae-fusion dataset``: write a tri-modal data set (``--out DIR``) or check one (``--check DIR``).

``--out DIR --samples N --seed S``: simulate N samples in the PyBullet AMiRo world (``m2vae_fusion.sim``) and write
the shards and ``metadata.json`` of docs/formats.md (same seed → byte-identical files, whatever ``--workers``).
``--check DIR [--json OUT]``: train one classifier per (sensor, attribute) on the train split and print its test
accuracy (``m2vae_fusion.data.check``); exit status 1 when the single-sensor thresholds are not met.

A data source is a function ``(args) -> (source_name, seed, sensors, class_names, tasks, make_item, groups)`` (see
``_sim_source``); adding another (e.g. a rosbag) means adding its argument in ``configure`` and a branch in
``_pick_source`` (or handling it before ``_run_write`` in ``run``).
"""
import argparse

HELP = "simulate the tri-modal data set (--out DIR) or check its single-sensor separability (--check DIR)"


def configure(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR", help="write a new data set into DIR")
    mode.add_argument("--check", metavar="DIR", help="check the data set in DIR (classifiers on raw data)")
    parser.add_argument("--world", choices=("hard", "easy"), default="hard",
                        help="simulated world: hard (27 classes, ambiguous single observations; default) or easy "
                             "(the paper-like 8 classes, byte-identical to data sets made before --world existed)")
    parser.add_argument("--views", type=int, default=None,
                        help="hard world: observations per object instance (default 4; consecutive samples with one "
                             "object_id); the easy world has 1")
    parser.add_argument("--samples", type=int, default=2000, help="number of samples (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--overwrite", action="store_true", help="replace the data set in a non-empty --out DIR")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of samples in val (0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="fraction of samples in test (0.1)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes (2; output does not depend on it)")
    parser.add_argument("--json", metavar="OUT", help="with --check: also write the results as JSON to OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --from-bag BAG … --out DIR: a data set from rosbag2 recordings (m2vae_fusion.data.from_bag, docs/retrain.md)
    from m2vae_fusion.data.from_bag import add_arguments as add_from_bag_arguments

    add_from_bag_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.from_bag:  # rosbag2 source: m2vae_fusion.data.from_bag
        from m2vae_fusion.data.from_bag import run_cli

        return run_cli(args)
    if args.check:
        return _run_check(args)
    return _run_write(args)


# ------------------------------------------------------------------------------------------------ writing
def _split_plan(samples: int, val_fraction: float, test_fraction: float, shard_size: int):
    """[(split, index, n), ...] covering ``samples`` samples; raises UserError for bad numbers."""
    from m2vae_fusion.errors import UserError

    if samples <= 0:
        raise UserError(f"--samples must be positive (got {samples})")
    if shard_size <= 0:
        raise UserError(f"--shard-size must be positive (got {shard_size})")
    for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise UserError(f"{name} must be in [0, 1) (got {f})")
    n_val = int(round(samples * val_fraction))
    n_test = int(round(samples * test_fraction))
    n_train = samples - n_val - n_test
    if n_train <= 0:
        raise UserError(f"--val-fraction + --test-fraction leave no training samples out of {samples}")
    plan = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for index, start in enumerate(range(0, n, shard_size)):
            plan.append((split, index, min(shard_size, n - start)))
    return plan


def _sim_chunk(task):
    from m2vae_fusion.sim.generate import generate_chunk

    seed, split, index, chunk, n = task
    return generate_chunk(seed, split, index, chunk, n)


def _hard_chunk(task):
    from m2vae_fusion.sim.generate import generate_chunk

    views, seed, split, index, chunk, n = task
    return generate_chunk(seed, split, index, chunk, n, world="hard", views=views)


DEFAULT_VIEWS = 4


def _sim_source(args):
    """The simulator as a data source: metadata parts, the list of work items ``(…, n)`` (their last element is the
    sample count), the function computing one item (picklable, run in worker processes), and how items group into
    shards (``[(split, index, number of items)]``); the hard world adds metadata keys (``world``, ``classes``,
    ``views``) as the 8th element."""
    from m2vae_fusion.data.classes import CLASS_NAMES, classes_of
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.sim.generate import sensor_metadata, shard_chunks

    world = getattr(args, "world", "easy") or "easy"
    views = getattr(args, "views", None)
    if world == "easy" and views not in (None, 1):
        raise UserError("--views applies to the hard world only (the easy world observes each object once)")
    if views is not None and not 1 <= views <= 250:
        raise UserError(f"--views must be 1..250 (got {views})")
    views = DEFAULT_VIEWS if views is None and world == "hard" else (views or 1)
    if views < 1 or views > 250:
        raise UserError(f"--views must be 1..250 (got {views})")
    plan = _split_plan(args.samples, args.val_fraction, args.test_fraction, args.shard_size)
    tasks, groups = [], []
    for split, index, n in plan:
        sizes = shard_chunks(n)
        if world == "hard":
            tasks += [(views, args.seed, split, index, c, m) for c, m in enumerate(sizes)]
        else:
            tasks += [(args.seed, split, index, c, m) for c, m in enumerate(sizes)]
        groups.append((split, index, len(sizes)))
    if world == "hard":
        from m2vae_fusion.sim import hard

        return ("sim", args.seed, hard.sensor_metadata(), classes_of("hard").class_names, tasks, _hard_chunk, groups,
                {"world": "hard", "extra": {"views": views}})
    return "sim", args.seed, sensor_metadata(), CLASS_NAMES, tasks, _sim_chunk, groups, {}


def _pick_source(args):
    return _sim_source(args)


def _ordered_results(func, tasks, workers):
    """Apply ``func`` to ``tasks`` in order, in ``workers`` processes when > 1 (results come back in task order)."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield func(t)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    with ctx.Pool(min(workers, len(tasks)), initializer=_worker_signals) as pool:
        yield from pool.imap(func, tasks, chunksize=1)


def _worker_signals():
    """Workers leave Ctrl-C to the parent (which terminates the pool) and die quietly on SIGTERM."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _grouped(results, groups, on_item):
    """Concatenate consecutive results into shards: yields ``(split, index, arrays)`` per group."""
    import numpy as np

    results = iter(results)
    for split, index, count in groups:
        parts = []
        for _ in range(count):
            parts.append(next(results))
            on_item(parts[-1])
        yield split, index, {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_write(args) -> int:
    import signal
    import time

    from tqdm import tqdm

    from m2vae_fusion.data.shards import prepare_output_dir, write_dataset
    from m2vae_fusion.errors import UserError

    if args.workers < 1:
        raise UserError(f"--workers must be >= 1 (got {args.workers})")
    source, seed, sensors, class_names, tasks, make_item, groups, meta_extra = _pick_source(args)
    prepare_output_dir(args.out, args.overwrite)  # refuse bad --out before any work
    total = sum(t[-1] for t in tasks)
    start = time.perf_counter()
    bar = tqdm(total=total, unit="sample", desc="dataset", disable=args.no_progress, dynamic_ncols=True)
    # SIGTERM behaves like Ctrl-C: workers stop, the shard being written is dropped, no metadata.json is written
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        items = _ordered_results(make_item, tasks, args.workers)
        meta = write_dataset(args.out, _grouped(items, groups, lambda a: bar.update(len(a["label"]))), source, seed,
                             sensors, class_names, overwrite=True, **meta_extra)
    finally:
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    dt = time.perf_counter() - start
    splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    world = meta.get("world", "easy")
    print(f"wrote {total} samples ({splits}) of the {world} world in {len(meta['shards'])} shards to {args.out} "
          f"in {dt:.1f} s: {total / dt:.0f} samples/s")
    return 0


# ------------------------------------------------------------------------------------------------ checking
def _run_check(args) -> int:
    import os
    import time

    import numpy as np
    from tqdm import tqdm

    from m2vae_fusion.data.check import format_table, separability
    from m2vae_fusion.data.shards import load_split, read_metadata, world_of
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.files import write_json

    meta = read_metadata(args.check)
    train = load_split(args.check, "train")
    test = load_split(args.check, "test")
    if len(test["label"]) == 0:
        test = load_split(args.check, "val")
    if len(train["label"]) == 0 or len(test["label"]) == 0:
        raise UserError(f"{args.check} needs samples in train and in test (or val) for --check")
    for part in (train, test):
        if np.any(part["label"] < 0) or not np.all(part["present"]):
            raise UserError(f"{args.check} has unlabelled samples or missing modalities; --check needs all of them")
    world = world_of(meta)
    bar = tqdm(total=4 if world == "easy" else 3, desc="check", unit="fit", disable=args.no_progress)
    start = time.perf_counter()
    try:
        result = separability(train, test, meta["sensors"], seed=0, progress=lambda: bar.update(1),
                              attributes=meta.get("attributes"), world=world, stress=world == "easy")
    finally:
        bar.close()
    result["dataset"] = {"dir": os.path.abspath(args.check), "seed": meta.get("seed"), "source": meta.get("source"),
                         "splits": meta.get("splits")}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(format_table(result))
    print(f"check took {result['seconds']} s")
    if args.json:
        try:
            write_json(args.json, result)
        except OSError as exc:
            raise UserError(f"cannot write --json {args.json}: {exc.strerror or exc}") from None
    return 0 if result["passed"] else 1
