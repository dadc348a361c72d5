"""``m2vae-fusion bench baselines --sets amiro``: the multimodal-VAE objectives side by side on the simulated AMiRo
world (issue 11, part (b)).

One data set (``--amiro-data DIR``; made with ``m2vae-fusion dataset --out DIR --samples N --seed S`` when DIR does
not exist yet: hard world, 4 views per object), one set of β-VAEs (trained once into ``--amiro-runs``/betavae, or
taken from ``--amiro-init-betavae RUN_DIR``), and for every objective in ``--objectives`` and seed in ``--seeds`` the
project's training pipeline (:mod:`m2vae_fusion.training.trainer`: multimodal VAE of the config's ``objective`` on
the shared standardised β-VAE features, then the class-belief head, then the ONNX bundle). So every row has the same
features, networks, latent size (32), optimiser and budget; only the objective differs. Each bundle is scored on the
test split with the runtime's ONNX networks (no torch), as ``m2vae-fusion eval`` does:

- ``meta``: scikit-learn ``MLPClassifier`` (defaults) fitted on the all-modality latent means of the train split,
  scored on the test split (FUSION 2019 Sec. V-D "meta-sensor"); the same on the raw β-VAE features is ``raw``.
- ``head``: the bundle's class-belief head on the latent mean of every subset encoder (27 classes; one sensor can
  tell one attribute only, so its ceiling is about 1/9).
- ``in_place``: :func:`m2vae_fusion.training.evaluate.chain_accuracy` with sampled latents, K = 3, 10, 50
  observations per object (each a different view), random sensor orders (``random``) and one sensor that keeps
  observing (``one_keeps``), plus the direct encoding of the same final evidence.
- ``coherence`` (MMVAE, Shi et al. 2019 Sec. 4; MoPoE, Sutter et al. 2021 Sec. 5): for every subset S and modality m,
  one latent sampled from the bundle's q_S (a mixture's moment-matched Gaussian, the posterior the bundle carries),
  decoded into m's β-VAE feature, classified by a per-modality attribute classifier (ExtraTrees, default settings)
  trained on real train-split features of the attribute m senses (camera → colour, LiDAR → shape, reflectance →
  material); the accuracy against the sample's true attribute. ``S → m`` with m ∉ S is cross-modal coherence, m ∈ S
  self-reconstruction. The classifiers' accuracy on real test features (``coherence_ceiling``) bounds it.
- ``elbo``: :func:`m2vae_fusion.training.evaluate.elbo_per_subset` (Eq. 20, all modalities decoded, 5 samples).
- ``train_s``: wall and CPU seconds of the multimodal VAE's training stage (the head and the export excluded; one
  thread, on a shared machine: compare rows of one run only).
- ``latency``: in-process engine latency of one observation as the node runs it, without ROS: β-VAE encoder
  (``Bundle.encode_feature``) of one preprocessed test input, :meth:`FusionEngine.observe` into the target's belief
  (accumulation on, the node's default), :meth:`FusionEngine.classify`; sensors in turn, a new target every three
  observations, after 20 warm-up observations; p50 / p90 in milliseconds. ``merge_ms``: p50 of
  :meth:`FusionEngine.merge` of a peer's three-sensor belief into a one-sensor belief.

Mean over seeds and a 95 % Student-t interval (``t_{0.975, n−1} · s / √n``).

Time with the defaults (``--amiro-samples 5000``: 4,000 train / 500 val / 500 test, 126 test objects; every
multimodal VAE 1,500 optimiser steps of 256), measured on the shared 2-core machine (load 3-5 from other jobs): data
set 26 s, β-VAEs 228 s (once), then 33-192 s per (objective, seed) (training stage 22-55 s, head 13 s, export and
scoring the rest); 5 objectives × 3 seeds 25 min wall in all. ``--amiro-reuse`` keeps every scored run (its
``result.json``), so a call that adds seeds or re-renders the table only trains what is new. ``--amiro-quick``:
2,000 samples, 600 steps, 20 head epochs: 7 min wall for 5 × 3, data set and β-VAEs included (load 3.3-4).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from typing import Dict, Mapping, Sequence

import numpy as np

#: the attribute each sensor reads (hard world): camera → colour, LiDAR → shape, reflectance → material
ATTRIBUTE_OF = {"camera": "colour", "lidar": "shape", "reflectance": "material"}
CHAIN_K = (3, 10, 50)
SHORT = {"camera": "C", "lidar": "L", "reflectance": "R"}
DEFAULT_SAMPLES = 5000
DEFAULT_STEPS = 1500
QUICK = {"samples": 2000, "steps": 600, "head_epochs": 20}


def configure(parser):
    g = parser.add_argument_group("amiro set (--sets amiro: the simulated AMiRo world)")
    g.add_argument("--amiro-data", metavar="DIR", default=os.path.join("data", "baselines_amiro"),
                   help="hard-world data set (made here when DIR does not exist; default data/baselines_amiro)")
    g.add_argument("--amiro-samples", type=int,
                   help=f"samples of a data set made here (default {DEFAULT_SAMPLES}; --amiro-quick {QUICK['samples']})")
    g.add_argument("--amiro-data-seed", type=int, default=11, help="seed of a data set made here (default 11)")
    g.add_argument("--amiro-runs", metavar="DIR", default=os.path.join("runs", "baselines_amiro"),
                   help="run directories and bundles (default runs/baselines_amiro; bundles in DIR/bundles)")
    g.add_argument("--amiro-init-betavae", metavar="RUN_DIR",
                   help="reuse these β-VAEs (a train run directory whose betavae stage finished; default: train once)")
    g.add_argument("--amiro-steps", type=int,
                   help=f"optimiser steps of every multimodal VAE (default {DEFAULT_STEPS}; quick {QUICK['steps']})")
    g.add_argument("--amiro-set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override for every run (repeatable), e.g. head.epochs=30")
    g.add_argument("--amiro-quick", action="store_true",
                   help="smaller budget: 2000-sample data set, 600 steps, 20 head epochs (7 min measured)")
    g.add_argument("--amiro-reuse", action="store_true",
                   help="reuse the scored runs of an earlier call with the same data, β-VAEs, budget, objective and "
                        "seed (their result.json), e.g. to add seeds; reused rows are marked")
    g.add_argument("--amiro-latency-n", type=int, default=300, help="observations timed per bundle (default 300)")


# ------------------------------------------------------------------------------------------------ training

def _budget(args) -> tuple:
    steps = args.amiro_steps if args.amiro_steps is not None else (QUICK["steps"] if args.amiro_quick
                                                                    else DEFAULT_STEPS)
    samples = args.amiro_samples if args.amiro_samples is not None else (QUICK["samples"] if args.amiro_quick
                                                                         else DEFAULT_SAMPLES)
    over = [f"m2vae.min_steps={steps}", "m2vae.epochs=1", "threads=1"]
    if args.amiro_quick:
        over.append(f"head.epochs={QUICK['head_epochs']}")
    return steps, samples, over + list(args.amiro_set)


def ensure_data(args, samples: int, log=print) -> str:
    """The data set directory: ``--amiro-data`` when it exists, else a new hard-world set made there."""
    from m2vae_fusion.cli import main as cli_main
    from m2vae_fusion.errors import UserError

    d = args.amiro_data
    if os.path.isdir(d) and os.listdir(d):
        return d
    if samples < 50:
        raise UserError("--amiro-samples must be at least 50")
    log(f"[amiro] making the data set {d} ({samples} samples, seed {args.amiro_data_seed})")
    if cli_main(["dataset", "--out", d, "--samples", str(samples), "--seed", str(args.amiro_data_seed),
                 "--no-progress"]) != 0:
        raise UserError(f"{d}: making the data set failed")
    return d


def _config(overrides: Sequence[str]):
    from m2vae_fusion.training import config as cfgmod

    return cfgmod.load_config(None, overrides)


def train_betavaes(data: str, run_dir: str, overrides: Sequence[str], log=print) -> str:
    """Train the shared β-VAEs once (stage ``betavae``: checkpoints, standardisation, ``features.npz``)."""
    from m2vae_fusion.training.trainer import Run

    done = [os.path.join(run_dir, "features.npz"), os.path.join(run_dir, "dataset.json")]
    if all(os.path.isfile(p) for p in done):
        log(f"[amiro] β-VAEs taken from {run_dir} (already trained)")
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    r = Run(run_dir, _config(list(overrides) + ["threads=2"]), data, log=log)
    r.stage_betavae()
    return run_dir


def train_one(name: str, seed: int, data: str, base: str, runs: str, overrides: Sequence[str], log=print) -> Dict:
    """One (objective, seed): the multimodal VAE, the head and the bundle, on the β-VAEs of ``base``. Returns the
    bundle directory and the training stage's wall and CPU seconds."""
    from m2vae_fusion.errors import UserError
    from m2vae_fusion.training.trainer import Run

    run_dir = os.path.join(runs, f"{name}_s{seed}")
    bundle = os.path.join(runs, "bundles", f"{name}_s{seed}")
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    cfg = _config(list(overrides) + [f"objective={name}", f"seed={seed}"])
    for m in cfg["modalities"]:
        src = os.path.join(base, "checkpoints", f"betavae_{m}.pt")
        if not os.path.isfile(src):
            raise UserError(f"{src}: missing (the β-VAE run must have finished its betavae stage)")
        shutil.copyfile(src, os.path.join(run_dir, "checkpoints", f"betavae_{m}.pt"))
    for f in ("features.npz", "dataset.json"):
        shutil.copyfile(os.path.join(base, f), os.path.join(run_dir, f))
    p = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(p):
        os.remove(p)
    r = Run(run_dir, cfg, data, log=log)
    if not r.standardization_matches():
        raise UserError(f"{base}: its β-VAE standardisation differs from the config's betavae.standardize")
    r.write_config()
    w0, c0 = time.time(), time.process_time()
    r.stage_m2vae()
    train = {"train_wall_s": round(time.time() - w0, 2), "train_cpu_s": round(time.process_time() - c0, 2)}
    r.stage_head()
    r.stage_export(bundle, seed=seed)
    return {"bundle": bundle, **train}


# ------------------------------------------------------------------------------------------------ scoring

class Scorer:
    """The test data, the shared β-VAE features and the reference classifiers, computed once for every bundle.

    Args:
        bundle_dir: any bundle of the run (the β-VAE encoders are the same in every one; checked per bundle).
        data: the data set directory.
    """

    def __init__(self, bundle_dir: str, data: str, seed: int = 0):
        import warnings

        from sklearn.ensemble import ExtraTreesClassifier
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        from m2vae_fusion.core.bundle import Bundle
        from m2vae_fusion.data.shards import load_split
        from m2vae_fusion.training.data import load_dataset
        from m2vae_fusion.training.evaluate import _full, bundle_features, object_groups

        b = Bundle.load(bundle_dir)
        self.mods = list(b.modalities)
        self.encoder_sha = self._encoder_sha(b)
        sensors = {m: b.input_config(m) for m in self.mods}
        _, _, splits = load_dataset(data, self.mods, ("train", "test"), sensors=sensors)
        tr, te = splits["train"], splits["test"]
        ktr, kte = _full(tr, self.mods), _full(te, self.mods)
        ftr, fte = bundle_features(b, tr), bundle_features(b, te)
        self.ftr = {m: ftr[m][ktr] for m in self.mods}
        self.fte = {m: fte[m][kte] for m in self.mods}
        self.ytr, self.yte = tr.label[ktr], te.label[kte]
        self.xte = {m: te.inputs[m][kte] for m in self.mods}
        self.atr = {a: v[ktr] for a, v in tr.attributes.items()}
        self.ate = {a: v[kte] for a, v in te.attributes.items()}
        raw_test = load_split(data, "test")
        oid = raw_test["object_id"][kte] if "object_id" in raw_test else -np.ones(int(kte.sum()), np.int64)
        self.groups = object_groups(oid)
        self.seed = seed
        self.class_names = list(b.class_names)
        raw_tr = np.concatenate([self.ftr[m] for m in self.mods], 1)
        raw_te = np.concatenate([self.fte[m] for m in self.mods], 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.raw_meta = float(MLPClassifier(random_state=seed).fit(raw_tr, self.ytr).score(raw_te, self.yte))
        self.attr_clf, self.coherence_ceiling = {}, {}
        for m in self.mods:
            a = ATTRIBUTE_OF.get(m)
            if a is None or a not in self.atr:
                continue
            clf = ExtraTreesClassifier(random_state=seed, n_jobs=1).fit(self.ftr[m], self.atr[a])
            self.attr_clf[m] = clf
            self.coherence_ceiling[m] = float(clf.score(self.fte[m], self.ate[a]))

    @staticmethod
    def _encoder_sha(bundle) -> dict:
        files = bundle.manifest.get("files") or {}
        enc = bundle.manifest["networks"]["betavae_encoder"]
        out = {}
        for m, f in enc.items():
            v = files.get(f)
            out[m] = v.get("sha256") if isinstance(v, dict) else v
        return out

    def score(self, bundle_dir: str, seed: int, latency_n: int = 300) -> Dict:
        """Every figure of the module docstring for one bundle."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        from m2vae_fusion.core.bundle import Bundle
        from m2vae_fusion.errors import UserError
        from m2vae_fusion.training.evaluate import _batched, chain_accuracy, elbo_per_subset

        b = Bundle.load(bundle_dir)
        if self._encoder_sha(b) != self.encoder_sha:
            raise UserError(f"{bundle_dir}: its β-VAE encoders differ from the other bundles' (not one feature set)")
        if not b.has_head:
            raise UserError(f"{bundle_dir}: bundle has no class-belief head")
        out: Dict = {"objective": b.manifest.get("objective", "m2vae"), "model_id": b.model_id}
        n_tr, n_te = len(self.ytr), len(self.yte)
        emb_tr = _batched(lambda d: b.encode_subset(d)[0], dict(self.ftr), n_tr)
        emb_te = _batched(lambda d: b.encode_subset(d)[0], dict(self.fte), n_te)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            out["meta"] = float(MLPClassifier(random_state=seed).fit(emb_tr, self.ytr).score(emb_te, self.yte))
        rng = np.random.default_rng(seed + 5)
        head, coh = {}, {}
        for s in b.manifest["subsets"]:
            key = "+".join(s)
            mu, lv = _batched(lambda d: b.encode_subset(d), {m: self.fte[m] for m in s}, n_te)
            head[key] = float(np.mean(np.argmax(b.classify(mu), 1) == self.yte))
            z = (mu + np.exp(0.5 * lv) * rng.standard_normal(mu.shape)).astype(np.float32)
            for m, clf in self.attr_clf.items():
                xr = _batched(lambda d, m=m: b.decode(m, d["z"]), {"z": z}, n_te)
                ok = np.all(np.isfinite(xr), axis=1)
                pred = np.full(n_te, -1)
                if ok.any():
                    pred[ok] = clf.predict(xr[ok])
                coh[f"{key}->{m}"] = float(np.mean(pred == self.ate[ATTRIBUTE_OF[m]]))
        out["head"], out["coherence"] = head, coh
        cross = [v for k, v in coh.items() if k.split("->")[1] not in k.split("->")[0].split("+")]
        self_ = [v for k, v in coh.items() if k.split("->")[1] in k.split("->")[0].split("+")]
        out["coherence_cross_mean"] = float(np.mean(cross)) if cross else float("nan")
        out["coherence_self_mean"] = float(np.mean(self_)) if self_ else float("nan")
        out["in_place"] = {}
        for mode in ("random", "one_keeps"):
            out["in_place"][mode] = {}
            for k in CHAIN_K:
                c = chain_accuracy(b, self.fte, self.yte, self.groups, k, mode, True, seed + k)
                out["in_place"][mode][str(k)] = {"in_place": c["in_place"], "direct": c["direct"], "gap": c["gap"]}
        out["elbo"] = elbo_per_subset(b, self.fte, 5, seed)
        out["latency"] = self.latency(b, latency_n, seed)
        return out

    def latency(self, bundle, n: int, seed: int) -> Dict:
        """Engine time per observation (β-VAE encoder → observe → classify) and per merge, in ms (see module)."""
        from m2vae_fusion.benchmarks.common import stats_ms
        from m2vae_fusion.core.fusion import FusionEngine

        eng = FusionEngine(bundle)
        rng = np.random.default_rng(seed)
        n_te = len(self.yte)
        times, belief, stamp = [], None, 0.0
        warm = 20
        for i in range(n + warm):
            m = self.mods[i % len(self.mods)]
            if i % len(self.mods) == 0:
                belief = None
            j = int(rng.integers(n_te))
            stamp += 0.01
            t = time.perf_counter()
            mu, lv = bundle.encode_feature(m, self.xte[m][j:j + 1])
            belief = eng.observe(belief, f"t{i // len(self.mods)}", m, mu[0], stamp, "bench", log_variance=lv[0])
            eng.classify(belief)
            if i >= warm:
                times.append(time.perf_counter() - t)
        obs = stats_ms(times)
        # merges: a peer's three-sensor belief into an own one-sensor belief about the same target
        mtimes = []
        for i in range(max(20, n // 3)):
            j = int(rng.integers(n_te))
            peer = None
            for q, m in enumerate(self.mods):
                peer = eng.observe(peer, "m", m, self.fte[m][j], 1.0 + q, "peer")
            own = eng.observe(None, "m", self.mods[0], self.fte[self.mods[0]][j], 5.0, "own")
            t = time.perf_counter()
            eng.merge(own, peer)
            mtimes.append(time.perf_counter() - t)
        return {"observe_ms": obs, "merge_ms": stats_ms(mtimes), "what": "encode_feature + observe + classify"}


# ------------------------------------------------------------------------------------------------ summary

def _joint_coherence(coh: Mapping[str, float]) -> float:
    """Mean coherence of the all-modality subset → each modality (the largest subset in ``coh``'s keys)."""
    size = max(len(k.split("->")[0].split("+")) for k in coh)
    return float(np.mean([v for k, v in coh.items() if len(k.split("->")[0].split("+")) == size]))


def _flat(row: Mapping) -> Dict[str, float]:
    """The scalar figures of one run, by a flat key (the summary's and the table's)."""
    f = {"meta": row["meta"], "train_wall_s": row["train_wall_s"], "train_cpu_s": row["train_cpu_s"],
         "coh_cross": row["coherence_cross_mean"], "coh_self": row["coherence_self_mean"],
         "coh_joint": _joint_coherence(row["coherence"]),
         "latency_p50_ms": row["latency"]["observe_ms"]["p50"], "merge_p50_ms": row["latency"]["merge_ms"]["p50"]}
    for k, v in row["head"].items():
        f[f"head/{k}"] = v
    for k, v in row["coherence"].items():
        f[f"coh/{k}"] = v
    for k, v in row["elbo"].items():
        f[f"elbo/{k}"] = v
    for mode, d in row["in_place"].items():
        for k, c in d.items():
            f[f"inplace/{mode}/{k}"] = c["in_place"]
            f[f"direct/{mode}/{k}"] = c["direct"]
    return f


def summarise(runs: Sequence[Mapping], names: Sequence[str]) -> list:
    from m2vae_fusion.benchmarks.baselines import interval

    out = []
    for name in names:
        rs = [_flat(r) for r in runs if r["objective"] == name]
        if not rs:
            continue
        out.append({"objective": name, "seeds": [r["seed"] for r in runs if r["objective"] == name],
                    **{k: interval([float("nan") if r[k] is None else r[k] for r in rs]) for k in rs[0]}})
    return out


def _abbr(key: str) -> str:
    return "".join(SHORT.get(m, m) for m in key.split("+"))


def format_table(res: Mapping) -> str:
    from m2vae_fusion.benchmarks.common import table

    def cell(d, digits=3):
        if d is None:
            return "-"
        ci = d["ci95"]
        return f"{d['mean']:.{digits}f}" + ("" if ci != ci else f" ± {ci:.{digits}f}")

    summ = res["summary"]
    if not summ:
        return "amiro: no runs"
    subsets = [k.split("/", 1)[1] for k in summ[0] if k.startswith("head/")]
    n = len(res["seeds"])
    cap = (f"{res['data']['samples']} samples ({res['data']['test_samples']} test, {res['data']['test_objects']} "
           f"objects), {res['config']['steps']} steps, {n} seed(s), mean ± 95 % interval")
    out = []
    rows = [[s["objective"], cell(s["meta"]), *(cell(s[f"head/{k}"]) for k in subsets)] for s in summ]
    out.append(table(["objective", "meta-sensor MLP", *(f"head {_abbr(k)}" for k in subsets)], rows,
                     f"AMiRo {res['data']['world'] or 'simulated'} world ({res['data']['classes']} classes), accuracy: meta-sensor MLP on the joint latent mean (raw β-VAE "
                     f"features: {res['raw_meta']:.3f}); the bundle's head per subset; " + cap))
    rows = []
    for s in summ:
        rows.append([s["objective"], *(cell(s[f"inplace/random/{k}"]) for k in CHAIN_K),
                     cell(s[f"direct/random/{CHAIN_K[-1]}"]), cell(s[f"inplace/one_keeps/{CHAIN_K[-1]}"]),
                     cell(s["train_wall_s"], 0), cell(s["train_cpu_s"], 0), cell(s["latency_p50_ms"], 2),
                     cell(s["merge_p50_ms"], 2)])
    out.append(table(["objective", *(f"in-place K={k}" for k in CHAIN_K), f"direct K={CHAIN_K[-1]}",
                      f"one keeps K={CHAIN_K[-1]}", "train wall s", "train CPU s", "observe p50 ms",
                      "merge p50 ms"], rows,
                     "in-place fusion with sampled latents (random sensor orders; 'one keeps': one sensor observes "
                     "on), training time of the multimodal VAE stage, engine latency (encoder + observe + classify)"))
    pairs = [k.split("/", 1)[1] for k in summ[0] if k.startswith("coh/")]
    cross = [p for p in pairs if p.split("->")[1] not in p.split("->")[0].split("+")]
    own = [p for p in pairs if p.split("->")[1] in p.split("->")[0].split("+")]
    ceil = ", ".join(f"{SHORT.get(m, m)} {v:.3f}" for m, v in res["coherence_ceiling"].items())
    head_txt = (f"classifiers on real test features: {ceil}; chance {res.get('coherence_chance', {})}")
    rows = [[s["objective"], *(cell(s[f"coh/{p}"]) for p in cross), cell(s["coh_cross"])] for s in summ]
    out.append(table(["objective", *(f"{_abbr(p.split('->')[0])}→{_abbr(p.split('->')[1])}" for p in cross),
                      "mean"], rows,
                     "cross-modal coherence (S → m, m not in S): attribute accuracy of m's feature generated from a "
                     "sampled latent of S (C colour, L shape, R material); " + head_txt))
    rows = [[s["objective"], *(cell(s[f"coh/{p}"]) for p in own), cell(s["coh_self"])] for s in summ]
    out.append(table(["objective", *(f"{_abbr(p.split('->')[0])}→{_abbr(p.split('->')[1])}" for p in own),
                      "mean"], rows,
                     "coherence of the observed modalities (S → m, m in S): the same with m's own evidence in S"))
    rows = [[s["objective"], *(cell(s[f"elbo/{k}"], 2) for k in subsets)] for s in summ]
    out.append(table(["objective", *(f"ELBO {_abbr(k)}" for k in subsets)], rows,
                     "test ELBO per subset (nats per sample, all modalities decoded, 5 samples)"))
    return "\n".join(out)


def plot(res: Mapping, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = res["summary"]
    full = max((k.split("/", 1)[1] for k in summ[0] if k.startswith("head/")), key=lambda k: len(k.split("+")))
    panels = [("meta", "meta-sensor MLP"), (f"head/{full}", "head, all sensors"),
              (f"inplace/random/{CHAIN_K[-1]}", f"in-place K={CHAIN_K[-1]}"),
              (f"inplace/one_keeps/{CHAIN_K[-1]}", f"one keeps K={CHAIN_K[-1]}"),
              ("coh_joint", "coherence, all sensors → each"), ("coh_cross", "cross-modal coherence")]
    x = np.arange(len(summ))
    w = 0.8 / len(panels)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(summ) + 3), 4.4))
    for j, (k, label) in enumerate(panels):
        m = [s[k]["mean"] for s in summ]
        e = [0.0 if s[k]["ci95"] != s[k]["ci95"] else s[k]["ci95"] for s in summ]
        ax.bar(x + (j - (len(panels) - 1) / 2) * w, m, w, yerr=e, capsize=2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([s["objective"] for s in summ])
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy (test)")
    ax.set_title(f"AMiRo {res['data']['world'] or 'simulated'} world: objectives side by side ({len(res['seeds'])} seeds, mean ± 95 % interval)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ entry point

def _cached(path: str, key: Mapping):
    """The row stored at ``path`` by an earlier run with the same data, β-VAEs, budget, objective and seed (its
    bundle still there), else None."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    row = d.get("row") or {}
    if d.get("key") != dict(key) or not os.path.isfile(os.path.join(str(row.get("bundle")), "manifest.json")):
        return None
    return row


def run_set(args, names: Sequence[str], seeds: Sequence[int]) -> Dict:
    """Part (b): train every (objective, seed) on one data set and one set of β-VAEs, score each bundle; returns
    the JSON-ready result with ``table`` (the printed text)."""
    from m2vae_fusion.benchmarks.common import load_average, write_json
    from m2vae_fusion.data.shards import read_metadata
    from m2vae_fusion.errors import UserError

    os.environ.setdefault("M2VAE_NO_PROGRESS", "1")
    steps, samples, overrides = _budget(args)
    if steps < 1:
        raise UserError("--amiro-steps must be positive")
    if args.amiro_latency_n < 1:
        raise UserError("--amiro-latency-n must be positive")
    _config(overrides)  # bad --amiro-set: a UserError naming the key, before anything runs
    t0 = time.time()
    load = {"start": load_average()}
    data = ensure_data(args, samples)
    meta = read_metadata(data)
    runs_dir = args.amiro_runs
    os.makedirs(runs_dir, exist_ok=True)
    tb = time.time()
    base = args.amiro_init_betavae or train_betavaes(data, os.path.join(runs_dir, "betavae"), overrides)
    betavae_s = round(time.time() - tb, 1)
    rows, scorer = [], None
    for seed in seeds:
        for name in names:
            t = time.time()
            key = {"data": os.path.abspath(data), "betavae_run": os.path.abspath(base), "overrides": list(overrides),
                   "latency_n": args.amiro_latency_n, "objective": name, "seed": seed}
            cache = os.path.join(runs_dir, f"{name}_s{seed}", "result.json")
            r = _cached(cache, key) if args.amiro_reuse else None
            if r is None:
                tr = train_one(name, seed, data, base, runs_dir, overrides, log=lambda *_: None)
                if scorer is None:
                    scorer = Scorer(tr["bundle"], data, seed=0)
                r = {"objective": name, "seed": seed, **tr,
                     **scorer.score(tr["bundle"], seed, args.amiro_latency_n)}
                r["seconds"] = round(time.time() - t, 1)
                r["load_average"] = load_average()
                write_json(cache, {"key": key, "row": r})
            else:
                r["reused"] = cache
            rows.append(r)
            print(f"[amiro] seed {seed} {name:<6} meta {r['meta']:.3f} head all "
                  f"{max(r['head'].items(), key=lambda kv: len(kv[0]))[1]:.3f} in-place K=50 "
                  f"{r['in_place']['random']['50']['in_place']:.3f} coherence cross {r['coherence_cross_mean']:.3f} "
                  f"train {r['train_wall_s']:.0f} s, observe p50 {r['latency']['observe_ms']['p50']:.2f} ms "
                  + (f"(reused: {cache}; {r['seconds']:.0f} s, load {(r.get('load_average') or ['?'])[0]} then)"
                     if r.get("reused") else f"({r['seconds']:.0f} s, load {load_average()[0]})"), flush=True)
    load["end"] = load_average()
    if scorer is None:
        scorer = Scorer(rows[0]["bundle"], data, seed=0)
    res = {"part": "b: simulated AMiRo world (hard)", "seeds": list(seeds), "objectives": list(names),
           "data": {"dir": data, "samples": int(sum((meta.get("splits") or {}).values())),
                    "seed": meta.get("seed"), "world": meta.get("world"), "classes": len(scorer.class_names),
                    "test_samples": len(scorer.yte), "test_objects": len(scorer.groups)},
           "config": {"steps": steps, "overrides": list(overrides), "betavae_run": base},
           "raw_meta": scorer.raw_meta, "coherence_ceiling": scorer.coherence_ceiling,
           "coherence_chance": {SHORT.get(m, m): round(1.0 / len(np.unique(scorer.atr[ATTRIBUTE_OF[m]])), 3)
                                for m in scorer.attr_clf},
           "attribute_of": ATTRIBUTE_OF, "runs": rows, "summary": summarise(rows, names),
           "betavae_seconds": betavae_s, "load_average": load, "seconds": round(time.time() - t0, 1)}
    res["table"] = format_table(res)
    return res
