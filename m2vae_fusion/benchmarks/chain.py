"""``m2vae-fusion bench chain``: onnxruntime time per observation, the per-network path against the merged chain
graphs with IOBinding (format v2, :mod:`m2vae_fusion.core.chains`), measured in the same run.

One observation = what the fusion node runs for it in steady state: the β-VAE encoder of the observed modality (not
for a peer latent), :meth:`FusionEngine.observe` (or :meth:`~FusionEngine.merge`) and :meth:`FusionEngine.classify`.
The belief it is fused into holds the other modalities, so the held slots are decoded (the largest chain):

- ``camera`` / ``lidar`` / ``reflectance``: an observation fused into a belief holding the other two slots;
- ``peer``: a peer latent holding two slots (newer) merged into a belief holding the third (decode both, re-encode).

The two paths alternate observation by observation (same inputs, same process), so machine load hits both alike;
the ratio of their p50s is the figure to read. Session runs per observation are counted, not assumed.
"""
from __future__ import annotations

import time

HELP = "ort time per observation: per-network sessions vs merged chain graphs with IOBinding (format v2)"

KINDS = ("camera", "lidar", "reflectance", "peer")


def configure(parser):
    parser.add_argument("--bundle", help="model bundle (default: the installed/repository models/amiro)")
    parser.add_argument("--repeats", type=int, default=2000, help="observations per kind and path (default 2000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed observations first (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, as the node)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="write the results here (JSON)")


class _Counter:
    """Counts session runs of a bundle (per-network runs and chain runs) by wrapping its two run methods."""

    def __init__(self, bundle):
        self.n = 0
        run, run_chain = bundle._run, bundle._run_chain

        def counted_run(*a, **k):
            self.n += 1
            return run(*a, **k)

        def counted_chain(*a, **k):
            self.n += 1
            return run_chain(*a, **k)

        bundle._run, bundle._run_chain = counted_run, counted_chain


def _cases(bundle, rng):
    """kind → (encode, fuse): ``encode(engine)`` runs the β-VAE encoder of the observation and returns its feature
    (None for a peer latent); ``fuse(engine, feature)`` fuses it (observe or merge) and classifies the result."""
    import numpy as np

    from m2vae_fusion.core.fusion import Belief, Slot

    mods = bundle.modalities
    dz = bundle.latent_dim
    cases = {}
    for kind in KINDS:
        if kind == "peer":
            own_mods, peer_mods = mods[:1], mods[1:]
        else:
            own_mods, peer_mods = tuple(m for m in mods if m != kind), ()
        own = Belief("t", bundle.sample_latents(rng)[0], np.full(dz, -1.0, np.float32),
                     {m: Slot(1.0, "me") for m in own_mods}, 0.0)
        if kind == "peer":
            peer = Belief("t", bundle.sample_latents(rng)[0], np.full(dz, -1.0, np.float32),
                          {m: Slot(2.0, "peer") for m in peer_mods}, 0.0)

            def fuse(eng, feature, own=own, peer=peer):
                b, _ = eng.merge(own, peer)
                return eng.classify(b)

            cases[kind] = (None, fuse)
        else:
            x = rng.uniform(0, 1, (1, *bundle.input_shape(kind))).astype(np.float32)

            def encode(eng, kind=kind, x=x):
                return eng.bundle.encode_feature(kind, x)[0][0]

            def fuse(eng, feature, own=own, kind=kind):
                return eng.classify(eng.observe(own, "t", kind, feature, 2.0, "me"))

            cases[kind] = (encode, fuse)
    return cases


def measure(bundle_dir: str, repeats: int = 2000, warmup: int = 100, threads: int = 1, seed: int = 0) -> dict:
    """Per kind and path (``per_network``, ``chain``): the fusion time (observe or merge, then classify; ms: p50,
    p90, p99, max, mean), the whole observation's time (β-VAE encoder + fusion), the session runs per observation,
    the ratios chain / per-network, and the largest difference between the two paths' class probabilities."""
    import numpy as np

    from m2vae_fusion.benchmarks.common import load_average, machine_info, stats_ms
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.core.fusion import FusionEngine

    paths = ("per_network", "chain")
    bundles = {p: Bundle.load(bundle_dir, threads=threads) for p in paths}
    counters = {p: _Counter(b) for p, b in bundles.items()}
    engines = {p: FusionEngine(bundles[p], chains=(p == "chain")) for p in paths}
    res = {"benchmark": "chain", "bundle": bundle_dir, "model_id": bundles["chain"].model_id,
           "repeats": repeats, "threads": threads, "machine": machine_info(), "kinds": {}}
    perf = time.perf_counter
    for kind, (encode, fuse) in _cases(bundles["chain"], np.random.default_rng(seed)).items():
        outs, runs = {}, {}
        for p, e in engines.items():
            before = counters[p].n
            outs[p] = fuse(e, encode(e) if encode else None)
            runs[p] = counters[p].n - before
        diff = float(np.max(np.abs(outs["chain"] - outs["per_network"]))) if outs["chain"] is not None else 0.0
        for _ in range(warmup):
            for e in engines.values():
                fuse(e, encode(e) if encode else None)
        fusion = {p: [] for p in paths}
        whole = {p: [] for p in paths}
        for i in range(repeats):
            for p in (paths if i % 2 == 0 else paths[::-1]):
                e = engines[p]
                t0 = perf()
                f = encode(e) if encode else None
                t1 = perf()
                fuse(e, f)
                t2 = perf()
                fusion[p].append(t2 - t1)
                whole[p].append(t2 - t0)
        row = {p: {"fusion_ms": stats_ms(fusion[p]), "observation_ms": stats_ms(whole[p]),
                   "session_runs": runs[p]} for p in paths}
        for what in ("fusion_ms", "observation_ms"):
            for q in ("p50", "p99"):
                row[f"ratio_{what[:-3]}_{q}"] = row["chain"][what][q] / row["per_network"][what][q]
        row["max_abs_diff_probabilities"] = diff
        res["kinds"][kind] = row
    res["variants"] = _variants(bundles["chain"], repeats, warmup, np.random.default_rng(seed + 1))
    res["load_average_after"] = load_average()
    return res


def _variants(bundle, repeats: int, warmup: int, rng) -> dict:
    """The split chosen, against its alternatives, for a camera observation into a belief holding the other slots:
    decode graph of the held slots vs of all slots, and IOBinding vs a plain ``run`` (µs p50 per session run)."""
    import numpy as np

    from m2vae_fusion.benchmarks.common import stats_ms

    mods = bundle.modalities
    held = [m for m in mods if m != mods[0]]
    z = rng.normal(0, 1, (1, bundle.latent_dim)).astype(np.float32)
    feats = {m: rng.normal(0, 1, (1, bundle.feature_dim)).astype(np.float32) for m in mods}
    calls = {
        f"decode {'+'.join(held)} (held slots), IOBinding": lambda: bundle.decode_slots(z, held),
        f"decode {'+'.join(mods)} (all slots), IOBinding": lambda: bundle.decode_slots(z, mods),
        f"decode {'+'.join(held)} (held slots), run()": lambda: bundle.decode_slots(z, held, bind=False),
        f"encode {'+'.join(mods)} → head, IOBinding": lambda: bundle.encode_slots(feats),
        f"encode {'+'.join(mods)} → head, run()": lambda: bundle.encode_slots(feats, bind=False),
    }
    for _ in range(warmup):
        for c in calls.values():
            c()
    times = {k: [] for k in calls}
    perf = time.perf_counter
    for i in range(repeats):
        for k, c in (calls.items() if i % 2 == 0 else reversed(calls.items())):
            t0 = perf()
            c()
            times[k].append(perf() - t0)
    return {k: stats_ms(t) for k, t in times.items()}


def format_table(res: dict) -> str:
    lines = [f"bundle {res['bundle']} (model_id {res['model_id']}), {res['repeats']} observations per kind and path "
             f"(alternating), {res['threads']} ort thread(s); load average before {res['machine']['load_average']}, "
             f"after {res['load_average_after']}",
             "fusion = observe/merge + classify (the ort chain); observation = β-VAE encoder + fusion; ms",
             f"{'kind':<12}{'runs':>5}{'fusion p50':>11}{'p99':>8}{'obs p50':>9}{'p99':>8} |{'runs':>5}"
             f"{'fusion p50':>11}{'p99':>8}{'obs p50':>9}{'p99':>8} | {'fusion ratio p50':>16}{'p99':>6}"
             f"{'obs ratio p50':>14}{'p99':>6} | max|Δp|",
             f"{'':<12}{'per-network sessions':^41} |{'chain graphs + IOBinding':^41} |"]
    for kind, r in res["kinds"].items():
        cells = []
        for p in ("per_network", "chain"):
            a = r[p]
            cells.append(f"{a['session_runs']:>5}{a['fusion_ms']['p50']:>11.3f}{a['fusion_ms']['p99']:>8.3f}"
                         f"{a['observation_ms']['p50']:>9.3f}{a['observation_ms']['p99']:>8.3f}")
        lines.append(f"{kind:<12}{cells[0]} |{cells[1]} | {r['ratio_fusion_p50']:>16.2f}{r['ratio_fusion_p99']:>6.2f}"
                     f"{r['ratio_observation_p50']:>14.2f}{r['ratio_observation_p99']:>6.2f} | "
                     f"{r['max_abs_diff_probabilities']:.1e}")
    lines.append("(runs: onnxruntime session runs per observation, counted; a shared machine makes absolute times "
                 "noisy, the ratios are measured in the same run)")
    lines.append("split variants, one session run each (µs p50 / p99):")
    for k, st in res.get("variants", {}).items():
        lines.append(f"  {k:<56} {st['p50'] * 1e3:>7.1f} {st['p99'] * 1e3:>7.1f}")
    return "\n".join(lines)


def run(args) -> int:
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.files import write_result
    from m2vae_fusion.paths import default_bundle_path

    if args.repeats <= 0 or args.warmup < 0 or args.threads <= 0:
        raise UserError("--repeats and --threads must be positive, --warmup ≥ 0")
    bundle_dir = args.bundle or default_bundle_path()
    res = measure(bundle_dir, args.repeats, args.warmup, args.threads, args.seed)
    print(format_table(res))
    write_result(args.json, res)
    return 0
