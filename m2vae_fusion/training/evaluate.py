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
