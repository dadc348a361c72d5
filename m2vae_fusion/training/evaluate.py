"""Evaluation of a model bundle on a data set, with the runtime's ONNX networks and fusion engine.

Figures (Korthals et al., FUSION 2019, Sec. V-D unless noted):

- ``meta_sensor``: scikit-learn MLP (defaults) on the concatenated raw β-VAE latent means vs on the M2VAE
  all-modality embedding (paper: 97.1 % vs 96.2 %).
- ``subset_accuracy``: the bundle's class-belief head on the latent mean of every subset encoder.
- ``in_place``: each test object observed by one sensor at a time, fused in place (Eq. 18) by
  :class:`m2vae_fusion.core.fusion.FusionEngine`, all 6 orders of the three sensors; for the bundle and an ablation
  bundle trained without the re-encoding loss (paper: 94.3 % with vs 65.8 % without).
- ``z_diff``: Eq. 21 after 1 and after 100 decode → re-encode steps per subset (median, p95).
- ``elbo``: test ELBO per subset, Eq. 20 (all modalities decoded from ``z ~ q_S``; feature likelihood
  ``N(x; x', σ² = 1/2)`` as in training), Monte-Carlo with ``elbo_samples`` draws.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from m2vae_fusion.errors import UserError

PAPER = {"meta_sensor": {"raw": 0.971, "m2vae": 0.962}, "in_place": {"with_reenc": 0.943, "without_reenc": 0.658}}


def _batched(fn, arrays: Mapping[str, np.ndarray], n: int, bs: int = 1024):
    outs = None
    for a in range(0, n, bs):
        res = fn({k: v[a:a + bs] for k, v in arrays.items()})
        res = res if isinstance(res, tuple) else (res,)
        if outs is None:
            outs = [[] for _ in res]
        for o, r in zip(outs, res):
            o.append(r)
    if outs is None:
        return None
    out = tuple(np.concatenate(o) for o in outs)
    return out if len(out) > 1 else out[0]


def bundle_features(bundle, split) -> Dict[str, np.ndarray]:
    """β-VAE latent means (the runtime's features) of every modality of a :class:`~.data.Split` (ONNX)."""
    feats = {}
    n = len(split)
    for m in bundle.modalities:
        f = _batched(lambda d, m=m: bundle.encode_feature(m, d["x"])[0], {"x": split.inputs[m]}, n, 512)
        feats[m] = np.asarray(f, np.float32)
    return feats


def _full(split, modalities: Sequence[str]) -> np.ndarray:
    """Samples with every modality present and a known label."""
    return np.all(split.present[:, [list(modalities).index(m) for m in modalities]], axis=1) & (split.label >= 0)


def in_place_accuracy(bundle, feats: Mapping[str, np.ndarray], labels: np.ndarray) -> Dict:
    """Accuracy after consecutive single-sensor sensing fused in place (paper Eq. 18, Sec. V-D), every order."""
    from m2vae_fusion.core.fusion import FusionEngine

    eng = FusionEngine(bundle)
    per = {}
    for order in itertools.permutations(bundle.modalities):
        z, have = None, []
        for m in order:
            z = _batched(lambda d, h=tuple(have), m=m: eng.fuse_batch(d.get("z"), h, m, d["f"])[0],
                         {"f": feats[m], **({"z": z} if z is not None else {})}, len(labels))
            have.append(m)
        p = _batched(lambda d: bundle.classify(d["z"]), {"z": z}, len(labels))
        per["→".join(order)] = float(np.mean(np.argmax(p, 1) == labels))
    return {"mean": float(np.mean(list(per.values()))), "min": float(min(per.values())), "per_order": per}


def z_diff_stats(bundle, feats: Mapping[str, np.ndarray], steps: Sequence[int] = (1, 100)) -> Dict:
    """Eq. 21 per subset: ``‖z − z_reenc‖₂`` after each number of re-encodings in ``steps`` (median, p95, max)."""
    from m2vae_fusion.core.fusion import FusionEngine

    eng = FusionEngine(bundle)
    out = {}
    n = len(next(iter(feats.values())))
    for s in bundle.manifest["subsets"]:
        key = "+".join(s)
        z0 = _batched(lambda d: bundle.encode_subset(d)[0], {m: feats[m] for m in s}, n)
        row = {}
        cur, done = z0, 0
        for k in sorted(steps):
            for _ in range(k - done):
                cur = _batched(lambda d, s=tuple(s): eng.reencode_batch(d["z"], s)[0], {"z": cur}, n)
            done = k
            d = np.linalg.norm(cur - z0, axis=1)
            row[f"after_{k}"] = {"median": float(np.median(d)), "p95": float(np.percentile(d, 95)),
                                 "max": float(np.max(d))}
        out[key] = row
    return out


def elbo_per_subset(bundle, feats: Mapping[str, np.ndarray], samples: int = 10, seed: int = 0) -> Dict[str, float]:
    """Test ELBO per subset (paper Eq. 20): ``E_{q_S}[log p(M|z) + log p(z) − log q_S(z|x_S)]`` in nats per sample,
    all modalities decoded, Gaussian feature likelihood with σ² = 1/2 (the training objective's)."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(feats.values())))
    log_norm = 0.5 * math.log(math.pi)
    out = {}
    for s in bundle.manifest["subsets"]:
        mu, lv = _batched(lambda d: bundle.encode_subset(d), {m: feats[m] for m in s}, n)
        total = np.zeros(n)
        for _ in range(samples):
            eps = rng.standard_normal(mu.shape).astype(np.float32)
            z = (mu + np.exp(0.5 * lv) * eps).astype(np.float32)
            ll = np.zeros(n)
            for m in bundle.modalities:
                xr = _batched(lambda d, m=m: bundle.decode(m, d["z"]), {"z": z}, n)
                ll -= np.sum((feats[m] - xr) ** 2, axis=1) + log_norm * xr.shape[1]
            log_pz = -0.5 * np.sum(z ** 2 + math.log(2 * math.pi), axis=1)
            log_q = -0.5 * np.sum(eps ** 2 + lv + math.log(2 * math.pi), axis=1)
            total += ll + log_pz - log_q
        out["+".join(s)] = float(np.mean(total / samples))
    return out


def meta_sensor(bundle, ftr: Mapping[str, np.ndarray], ytr: np.ndarray, fte: Mapping[str, np.ndarray],
                yte: np.ndarray, seed: int = 0) -> Dict:
    """scikit-learn ``MLPClassifier`` (defaults) on raw β-VAE means vs on the M2VAE all-modality embedding."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mods = bundle.modalities
    raw_tr = np.concatenate([ftr[m] for m in mods], 1)
    raw_te = np.concatenate([fte[m] for m in mods], 1)
    emb_tr = _batched(lambda d: bundle.encode_subset(d)[0], dict(ftr), len(ytr))
    emb_te = _batched(lambda d: bundle.encode_subset(d)[0], dict(fte), len(yte))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for key, (a, b) in (("raw", (raw_tr, raw_te)), ("m2vae", (emb_tr, emb_te))):
            clf = MLPClassifier(random_state=seed).fit(a, ytr)
            out[key] = float(clf.score(b, yte))
    return out


def evaluate(bundle_dir: str, data_dir: str, ablation_dir: Optional[str] = None, seed: int = 0,
             elbo_samples: int = 10, reencode_steps: int = 100, log=print) -> Dict:
    """All figures of this module for ``bundle_dir`` on the test split of ``data_dir`` (train split for the
    meta-sensor MLP). Returns the JSON-ready result."""
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.training.data import load_dataset

    t0 = time.time()
    bundle = Bundle.load(bundle_dir)
    if not bundle.has_head:
        raise UserError(f"{bundle_dir}: bundle has no class-belief head (trained without labels); nothing to score")
    mods = list(bundle.modalities)
    if len(mods) != 3:
        log(f"note: bundle has {len(mods)} modalities; in-place orders cover all of them")
    sensors = {m: bundle.input_config(m) for m in mods}
    meta, _, splits = load_dataset(data_dir, mods, ("train", "test"), sensors=sensors)
    names = meta.get("class_names")
    if names and list(names) != list(bundle.class_names):
        raise UserError(f"{data_dir}/metadata.json: class_names differ from the bundle's")
    tr, te = splits["train"], splits["test"]
    ktr, kte = _full(tr, mods), _full(te, mods)
    if not kte.any():
        raise UserError(f"{data_dir}: no labelled test sample with every modality")
    ftr_all, fte_all = bundle_features(bundle, tr), bundle_features(bundle, te)
    ftr = {m: ftr_all[m][ktr] for m in mods}
    fte = {m: fte_all[m][kte] for m in mods}
    ytr, yte = tr.label[ktr], te.label[kte]
    res: Dict = {"bundle": bundle_dir, "model_id": bundle.model_id, "data": data_dir,
                 "test_samples": int(kte.sum()), "train_samples": int(ktr.sum())}
    t = time.time()
    res["meta_sensor"] = meta_sensor(bundle, ftr, ytr, fte, yte, seed)
    res["meta_sensor"]["paper"] = PAPER["meta_sensor"]
    log(f"meta-sensor MLP done ({time.time() - t:.0f} s)")
    # head accuracy per subset (samples holding the subset's modalities)
    acc = {}
    for s in bundle.manifest["subsets"]:
        cols = [mods.index(m) for m in s]
        keep = np.all(te.present[:, cols], axis=1) & (te.label >= 0)
        z = _batched(lambda d: bundle.encode_subset(d)[0], {m: fte_all[m][keep] for m in s}, int(keep.sum()))
        p = _batched(lambda d: bundle.classify(d["z"]), {"z": z}, int(keep.sum()))
        acc["+".join(s)] = float(np.mean(np.argmax(p, 1) == te.label[keep]))
    res["subset_accuracy"] = acc
    t = time.time()
    res["in_place"] = {"bundle": in_place_accuracy(bundle, fte, yte), "paper": PAPER["in_place"]}
    res["z_diff"] = z_diff_stats(bundle, fte, (1, reencode_steps))
    log(f"in-place fusion and z_diff done ({time.time() - t:.0f} s)")
    if ablation_dir:
        abl = Bundle.load(ablation_dir)
        if list(abl.modalities) != mods or not abl.has_head:
            raise UserError(f"{ablation_dir}: ablation bundle must have the same modalities and a head")
        fa = bundle_features(abl, te)
        fa = {m: fa[m][kte] for m in mods}
        res["in_place"]["ablation"] = in_place_accuracy(abl, fa, yte)
        res["in_place"]["ablation_bundle"] = ablation_dir
        res["in_place"]["ablation_model_id"] = abl.model_id
        res["z_diff_ablation"] = z_diff_stats(abl, fa, (1, reencode_steps))
    res["elbo"] = elbo_per_subset(bundle, fte, elbo_samples, seed)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def format_table(res: Mapping) -> str:
    """Human-readable summary of :func:`evaluate`'s result."""
    L = [f"bundle {res['bundle']} (model_id {res['model_id']}), {res['test_samples']} test samples"]
    ms = res["meta_sensor"]
    L.append(f"meta-sensor MLP accuracy: raw β-VAE {ms['raw']:.3f} | M2VAE {ms['m2vae']:.3f}   "
             f"(paper {ms['paper']['raw']:.3f} | {ms['paper']['m2vae']:.3f})")
    ip = res["in_place"]
    line = f"in-place single-sensor accuracy (mean of 6 orders): {ip['bundle']['mean']:.3f} (min {ip['bundle']['min']:.3f})"
    if "ablation" in ip:
        line += f" | ablation {ip['ablation']['mean']:.3f} (min {ip['ablation']['min']:.3f})"
    L.append(line + f"   (paper {ip['paper']['with_reenc']:.3f} | {ip['paper']['without_reenc']:.3f})")
    steps = [k for k in next(iter(res["z_diff"].values()))]
    hdr = f"{'subset':<30}{'head acc':>9}{'ELBO':>10}" + "".join(f"{'zdiff ' + k.split('_')[1] + ' med':>15}"
                                                                  f"{'p95':>9}" for k in steps)
    L.append(hdr)
    for key, a in res["subset_accuracy"].items():
        row = f"{key:<30}{a:>9.3f}{res['elbo'][key]:>10.2f}"
        for k in steps:
            z = res["z_diff"][key][k]
            row += f"{z['median']:>15.4f}{z['p95']:>9.4f}"
        L.append(row)
    if "z_diff_ablation" in res:
        L.append("ablation z_diff (p95 after " + steps[-1].split("_")[1] + "): " + ", ".join(
            f"{k} {v[steps[-1]]['p95']:.3f}" for k, v in res["z_diff_ablation"].items()))
    return "\n".join(L)


# ================================================================================================ protocol v2
# Issue 10 ("evaluation v2"): sampled latents, long chains of in-place fusion over different observations of the
# same object, in-place minus direct-encoding accuracy, and information measures of the latent space. No torch:
# the bundle's ONNX networks through onnxruntime, scikit-learn for the PCA of the plots.

CHAIN_LENGTHS = (3, 10, 50)


def object_groups(object_id: np.ndarray) -> list:
    """Index arrays of the samples of each object (``object_id`` >= 0; an id without one falls back to its own
    sample, i.e. every observation of the chain is that one sample)."""
    ids = np.asarray(object_id)
    groups = {}
    for i, o in enumerate(ids):
        groups.setdefault(int(o) if o >= 0 else -1 - i, []).append(i)
    return [np.asarray(v, np.int64) for v in groups.values()]


def _sample(mean: np.ndarray, logvar: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``z = μ + σ·ε``; a row whose log-variance overflows gives non-finite values (a diverged chain, not a warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape)).astype(np.float32)


def _fuse_rows(eng, zin, have, modality, feats):
    """:meth:`FusionEngine.fuse_batch` on a batch; when it refuses the batch (non-finite or out-of-range outputs),
    row by row. Returns ``(mean, log_variance, ok)``: rows not ``ok`` are NaN."""
    from m2vae_fusion.core.fusion import FusionError

    try:
        mu, lv = eng.fuse_batch(zin, have, modality, feats)
        return mu, lv, np.ones(len(feats), bool)
    except FusionError:
        pass
    mus, lvs, ok = [], [], []
    for i in range(len(feats)):
        try:
            m1, l1 = eng.fuse_batch(None if zin is None else zin[i:i + 1], have, modality, feats[i:i + 1])
            mus.append(m1[0]), lvs.append(l1[0]), ok.append(True)
        except FusionError:
            mus.append(None), lvs.append(None), ok.append(False)
    nan = np.full(int(eng.bundle.latent_dim), np.nan, np.float32)
    return (np.stack([nan if m is None else m for m in mus]), np.stack([nan if v is None else v for v in lvs]),
            np.asarray(ok))


def chain_schedule(k_steps: int, modalities: Sequence[str], mode: str, rng: np.random.Generator) -> list:
    """The sensors of a chain of ``k_steps`` observations: ``"random"`` — consecutive random permutations of the
    modalities; ``"one_keeps"`` — one random permutation (each sensor once), then a randomly chosen sensor keeps
    observing while the others' evidence is carried along (decoded and re-encoded at every step)."""
    mods = list(modalities)
    out = []
    if mode == "random":
        while len(out) < k_steps:
            out += [mods[i] for i in rng.permutation(len(mods))]
    elif mode == "one_keeps":
        out = [mods[i] for i in rng.permutation(len(mods))]
        keeper = mods[int(rng.integers(len(mods)))]
        out += [keeper] * max(0, k_steps - len(out))
    else:
        raise ValueError(f"unknown chain mode {mode!r}")
    return out[:k_steps]


def chain_accuracy(bundle, feats: Mapping[str, np.ndarray], labels: np.ndarray, groups: Sequence[np.ndarray],
                   k_steps: int, mode: str = "random", sampled: bool = True, seed: int = 0) -> Dict:
    """In-place fusion (paper Eq. 18) along chains of ``k_steps`` observations per object, each observation a view
    drawn from the object's samples (never the same view twice in a row when it has more than one).

    With ``sampled`` the belief carried from step to step is a sample ``z ~ q`` (not the mean), so decode →
    re-encode errors accumulate as in a long-running node; the class is read from the final posterior mean.
    ``direct`` scores the same final evidence (the last observation of each sensor) encoded at once by the
    all-modality subset encoder (its mean): ``gap = in_place − direct``.

    A chain whose carried belief stops being finite or in range (the decoder or subset encoder gives non-finite or
    out-of-bounds values, or a sampled z overflows) has *diverged*: it stops there, counts as wrong and is counted
    in ``diverged``.

    Returns:
        ``{"in_place": acc, "direct": acc, "gap": in_place − direct, "objects": n, "diverged": n,
        "z_step_median": [...]}`` (``z_step_median``: median ‖z_k − z_{k−1}‖ of the posterior means per step over
        the chains that have not diverged, the chain's drift).
    """
    from m2vae_fusion.core.fusion import FusionEngine

    rng = np.random.default_rng(seed)
    eng = FusionEngine(bundle)
    mods = list(bundle.modalities)
    n_obj = len(groups)
    dz = int(bundle.latent_dim) if hasattr(bundle, "latent_dim") else None
    sched = [chain_schedule(k_steps, mods, mode, rng) for _ in range(n_obj)]
    last_view = np.full(n_obj, -1, np.int64)
    final_obs = {m: np.full(n_obj, -1, np.int64) for m in mods}
    have = [tuple() for _ in range(n_obj)]
    z = None
    mean_prev = None
    steps_med = []
    diverged = np.zeros(n_obj, bool)
    for k in range(k_steps):
        views = np.empty(n_obj, np.int64)
        for o, g in enumerate(groups):
            choice = g if len(g) < 2 else g[g != last_view[o]]
            views[o] = choice[int(rng.integers(len(choice)))]
        last_view = views
        new_mean = np.empty((n_obj, dz), np.float32) if dz else None
        new_lv = np.empty_like(new_mean) if dz else None
        keys = {}
        for o in range(n_obj):
            if not diverged[o]:
                keys.setdefault((have[o], sched[o][k]), []).append(o)
        for (h, m), idx in keys.items():
            idx = np.asarray(idx)
            zin = z[idx] if (z is not None and h) else None
            mu, lv, ok = _fuse_rows(eng, zin, h, m, feats[m][views[idx]])
            if new_mean is None:
                dz = mu.shape[1]
                new_mean, new_lv = np.empty((n_obj, dz), np.float32), np.empty((n_obj, dz), np.float32)
            new_mean[idx], new_lv[idx] = mu, lv
            diverged[idx[~ok]] = True
        new_mean[diverged], new_lv[diverged] = np.nan, np.nan
        for o in range(n_obj):
            m = sched[o][k]
            final_obs[m][o] = views[o]
            if m not in have[o]:
                have[o] = tuple(x for x in mods if x in have[o] or x == m)
        z = _sample(new_mean, new_lv, rng) if sampled else new_mean
        diverged |= ~np.all(np.isfinite(z), axis=1)
        if mean_prev is not None:
            live = ~diverged
            steps_med.append(float(np.median(np.linalg.norm(new_mean[live] - mean_prev[live], axis=1)))
                             if live.any() else float("nan"))
        mean_prev = new_mean
    truth = np.asarray([labels[g[0]] for g in groups])
    right = np.zeros(n_obj, bool)
    if (~diverged).any():
        right[~diverged] = np.argmax(bundle.classify(mean_prev[~diverged]), 1) == truth[~diverged]
    acc = float(np.mean(right))
    # direct encoding of the same final evidence (objects whose chain saw every sensor)
    full = np.all([final_obs[m] >= 0 for m in mods], axis=0)
    mu, _ = bundle.encode_subset({m: feats[m][final_obs[m][full]] for m in mods})
    direct = float(np.mean(np.argmax(bundle.classify(mu), 1) == truth[full])) if full.any() else float("nan")
    inplace_full = float(np.mean(right[full])) if full.any() else float("nan")
    return {"in_place": acc, "direct": direct, "gap": inplace_full - direct, "objects": int(n_obj),
            "objects_with_every_sensor": int(full.sum()), "diverged": int(diverged.sum()),
            "z_step_median": steps_med}


def information_measures(bundle, ftr: Mapping[str, np.ndarray], ytr: np.ndarray, fte: Mapping[str, np.ndarray],
                         yte: np.ndarray) -> Dict:
    """Per subset S: how much of the data the latent keeps (a collapsed latent is a class code).

    - ``r2``: per modality m, R² of the β-VAE feature decoded from the mean of ``q_S`` (``1 − SSE / SST`` over
      test samples and feature dimensions); ``r2_class_mean``: R² of the per-class mean feature (train split means),
      the baseline a pure class code reaches.
    - ``within_class_share``: within-class share of the latent means' variance, ``Σ_d Var_within / Σ_d Var_total``
      (≈ 0: the latent only tells the class).
    """
    classes = np.unique(ytr)
    out = {}
    sst = {m: float(np.sum((fte[m] - fte[m].mean(0)) ** 2)) for m in bundle.modalities}
    class_mean = {m: {c: ftr[m][ytr == c].mean(0) for c in classes} for m in bundle.modalities}
    r2_cm = {}
    for m in bundle.modalities:
        pred = np.stack([class_mean[m].get(c, ftr[m].mean(0)) for c in yte])
        r2_cm[m] = 1.0 - float(np.sum((fte[m] - pred) ** 2)) / max(sst[m], 1e-12)
    n = len(yte)
    for s in bundle.manifest["subsets"]:
        mu = _batched(lambda d: bundle.encode_subset(d)[0], {m: fte[m] for m in s}, n)
        r2 = {}
        for m in bundle.modalities:
            xr = _batched(lambda d, m=m: bundle.decode(m, d["z"]), {"z": mu}, n)
            r2[m] = 1.0 - float(np.sum((fte[m] - xr) ** 2)) / max(sst[m], 1e-12)
        total = float(np.sum(mu.var(0)))
        within = 0.0
        for c in np.unique(yte):
            sel = mu[yte == c]
            within += float(np.sum(sel.var(0))) * len(sel)
        out["+".join(s)] = {"r2": r2, "within_class_share": within / n / max(total, 1e-12)}
    return {"per_subset": out, "r2_class_mean": r2_cm}


def per_sensor_attributes(ftr: Mapping[str, np.ndarray], atr: Mapping[str, np.ndarray],
                          fte: Mapping[str, np.ndarray], ate: Mapping[str, np.ndarray], seed: int = 0) -> Dict:
    """scikit-learn ExtraTrees (default settings, ``random_state=seed``) on each modality's β-VAE latent means, one
    per attribute: test accuracy ``{modality: {attribute: acc}}`` (compare with ``dataset --check``'s ceilings)."""
    from sklearn.ensemble import ExtraTreesClassifier

    out = {}
    for m in ftr:
        out[m] = {}
        for a in ("colour", "shape", "material"):
            if a not in atr or a not in ate:
                continue
            clf = ExtraTreesClassifier(random_state=seed, n_jobs=2).fit(ftr[m], atr[a])
            out[m][a] = float(clf.score(fte[m], ate[a]))
    return out


def evaluate_v2(bundle_dir: str, data_dir: str, ablation_dir: Optional[str] = None, seed: int = 0,
                chain_lengths: Sequence[int] = CHAIN_LENGTHS, max_objects: int = 2000, log=print) -> Dict:
    """Protocol v2 (issue 10) for ``bundle_dir`` (and an ablation bundle) on the test split of ``data_dir``:
    ``chains[mode][K]`` (:func:`chain_accuracy`, sampled latents; modes ``random`` and ``one_keeps``),
    ``chains_mean`` (the same with posterior means), ``information`` (:func:`information_measures`) with
    ``z_diff`` (Eq. 21, after 1 and 50 re-encodings) and ``elbo`` per subset. Objects come from the test split's
    ``object_id`` (hard world, ``--views``); without it each sample is its own object (every step re-observes it)."""
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.data.shards import load_split
    from m2vae_fusion.training.data import load_dataset

    t0 = time.time()
    res: Dict = {"protocol": "v2", "chain_lengths": list(chain_lengths)}
    bundles = [("bundle", bundle_dir)] + ([("ablation", ablation_dir)] if ablation_dir else [])
    raw_test = load_split(data_dir, "test")
    for key, bdir in bundles:
        bundle = Bundle.load(bdir)
        if not bundle.has_head:
            raise UserError(f"{bdir}: bundle has no class-belief head (trained without labels); nothing to score")
        mods = list(bundle.modalities)
        sensors = {m: bundle.input_config(m) for m in mods}
        _, _, splits = load_dataset(data_dir, mods, ("train", "test"), sensors=sensors)
        tr, te = splits["train"], splits["test"]
        ktr, kte = _full(tr, mods), _full(te, mods)
        if not kte.any():
            raise UserError(f"{data_dir}: no labelled test sample with every modality")
        ftr_all, fte_all = bundle_features(bundle, tr), bundle_features(bundle, te)
        ftr = {m: ftr_all[m][ktr] for m in mods}
        fte = {m: fte_all[m][kte] for m in mods}
        ytr, yte = tr.label[ktr], te.label[kte]
        oid = raw_test["object_id"][kte] if "object_id" in raw_test else -np.ones(int(kte.sum()), np.int64)
        groups = object_groups(oid)[:max_objects]
        r: Dict = {"bundle": bdir, "model_id": bundle.model_id, "objects": len(groups),
                   "views_per_object": float(np.mean([len(g) for g in groups]))}
        for sampled, name in ((True, "chains"), (False, "chains_mean")):
            r[name] = {}
            for mode in ("random", "one_keeps"):
                r[name][mode] = {str(k): chain_accuracy(bundle, fte, yte, groups, k, mode, sampled, seed + k)
                                 for k in chain_lengths}
        log(f"{key}: chains done ({time.time() - t0:.0f} s)")
        r["information"] = information_measures(bundle, ftr, ytr, fte, yte)
        r["per_sensor_extratrees"] = per_sensor_attributes(
            ftr, {a: v[ktr] for a, v in tr.attributes.items()}, fte, {a: v[kte] for a, v in te.attributes.items()},
            seed)
        r["z_diff"] = z_diff_stats(bundle, fte, (1, 50))
        r["elbo"] = elbo_per_subset(bundle, fte, 5, seed)
        res[key] = r
    res["seconds"] = round(time.time() - t0, 1)
    return res


def format_table_v2(res: Mapping) -> str:
    """Human-readable summary of :func:`evaluate_v2`."""
    L = []
    for key in ("bundle", "ablation"):
        if key not in res:
            continue
        r = res[key]
        L.append(f"[v2] {key} {r['bundle']} (model_id {r['model_id']}), {r['objects']} objects, "
                 f"{r['views_per_object']:.1f} views each")
        for name, label in (("chains", "sampled"), ("chains_mean", "means")):
            for mode in ("random", "one_keeps"):
                cells = "  ".join(f"K={k}: {v['in_place']:.3f} (direct {v['direct']:.3f}, gap {v['gap']:+.3f}"
                                  + (f", {v['diverged']} diverged" if v.get("diverged") else "") + ")"
                                  for k, v in r[name][mode].items())
                L.append(f"  in-place {label:<7} {mode:<9} {cells}")
        pst = r.get("per_sensor_extratrees") or {}
        if pst:
            L.append("  ExtraTrees on β-VAE latent means: " + "; ".join(
                f"{m} " + ", ".join(f"{a} {v:.3f}" for a, v in row.items()) for m, row in pst.items()))
        info = r["information"]
        cm = info["r2_class_mean"]
        L.append("  class-mean baseline R²: " + ", ".join(f"{m} {v:.3f}" for m, v in cm.items()))
        L.append(f"  {'subset':<30}{'within-class':>13}{'ELBO':>9}{'zdiff50 p95':>13}  R² per modality")
        for s, v in info["per_subset"].items():
            L.append(f"  {s:<30}{v['within_class_share']:>13.3f}{r['elbo'][s]:>9.2f}"
                     f"{r['z_diff'][s]['after_50']['p95']:>13.4f}  "
                     + ", ".join(f"{m} {x:.3f}" for m, x in v["r2"].items()))
    return "\n".join(L)


def plot_v2(bundle_dir: str, data_dir: str, out_prefix: str, seed: int = 0, steps: int = 50) -> list:
    """The paper's figures for a bundle (matplotlib, Agg): ``<out_prefix>_embedding.png`` — PCA of the
    all-modality latent means of the test split coloured by colour, shape and material (Fig. 4);
    ``<out_prefix>_zdiff.png`` — median z_diff over ``steps`` decode → re-encode steps per subset (Fig. 5).
    Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.core.fusion import FusionEngine
    from m2vae_fusion.training.data import load_dataset

    bundle = Bundle.load(bundle_dir)
    mods = list(bundle.modalities)
    meta, _, splits = load_dataset(data_dir, mods, ("test",), sensors={m: bundle.input_config(m) for m in mods})
    te = splits["test"]
    keep = _full(te, mods)
    f = {m: v[keep] for m, v in bundle_features(bundle, te).items()}
    n = int(keep.sum())
    mu = _batched(lambda d: bundle.encode_subset(d)[0], f, n)
    xy = PCA(2, random_state=seed).fit_transform(mu)
    attrs = meta.get("attributes") or {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, a in zip(axes, ("colour", "shape", "material")):
        vals = te.attributes.get(a)[keep] if a in te.attributes else np.zeros(n, int)
        names = attrs.get(a) or [str(v) for v in np.unique(vals)]
        for v in np.unique(vals):
            sel = vals == v
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.6, label=names[v] if 0 <= v < len(names) else str(v))
        ax.set_title(f"M2VAE embedding (all sensors) by {a}")
        ax.legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    paths = [f"{out_prefix}_embedding.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    eng = FusionEngine(bundle)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in bundle.manifest["subsets"]:
        z0 = _batched(lambda d: bundle.encode_subset(d)[0], {m: f[m] for m in s}, n)
        cur, med = z0, []
        for _ in range(steps):
            cur = eng.reencode_batch(cur, tuple(s))[0]
            med.append(float(np.median(np.linalg.norm(cur - z0, axis=1))))
        ax.plot(range(1, steps + 1), med, label="+".join(s))
    ax.set_xlabel("decode → re-encode steps")
    ax.set_ylabel("median z_diff (Eq. 21)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"re-encoding drift, {bundle.model_id}")
    fig.tight_layout()
    paths.append(f"{out_prefix}_zdiff.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
