"""Unimodal class heads: one class posterior ``p(c | x_m)`` per modality from its β-VAE feature (beyond the paper).

The class evidence of a belief (``class_belief: evidence``, :class:`m2vae_fusion.core.fusion.Accumulation`) multiplies
the unimodal class posteriors of every observation. Without these heads each posterior is the class-belief head on
the M2VAE subset encoding of {m}; with the unsupervised hard-world β-VAEs that path loses most of the attribute
evidence the features hold (the M2VAE keeps their variance, not the low-variance directions the class lives in:
README "The shipped hard-world bundle"). A small MLP per modality on the β-VAE feature keeps it. The β-VAEs stay
unsupervised; like the class-belief head, the unimodal heads are trained with labels, on the data set's train split,
temperature-calibrated on its val split (Guo et al. 2017).

When the data set has the per-sample attribute arrays (``colour``, ``shape``, ``material``) and the class fixes each
of them, the block records the class → attribute mapping and, per head, which attributes it reads on the val split
(:func:`attribute_relevance`); the runtime then keeps only those attributes' marginals of the head's posterior
(:meth:`m2vae_fusion.core.fusion.FusionEngine.unimodal_log_posterior`): a head trained on 27 classes also memorises
the attributes its sensor cannot read, and that spurious evidence, the same at every view of one object, added up
over views into wrong and flipping beliefs (README "Beliefs that accumulate evidence").

The heads are an optional block of the bundle (manifest ``unimodal_heads``, docs/formats.md): their files are not
part of ``files`` and do not change ``model_id`` (the latent space is the same). Written by
``m2vae-fusion export --from-bundle DIR --out DIR --unimodal-heads DATASET_DIR`` and by ``train``'s export stage.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Mapping, Optional

import numpy as np

from m2vae_fusion.core.bundle import attribute_marginals
from m2vae_fusion.errors import BundleError

#: defaults of :func:`add_unimodal_heads`
HIDDEN, EPOCHS, BATCH, LR, WEIGHT_DECAY = 512, 120, 256, 1e-3, 1e-4
#: the data set's per-sample attribute arrays (docs/formats.md "Data set"), each an int code per sample
ATTRIBUTE_KEYS = ("colour", "shape", "material")
#: an attribute counts as read by a head when its val-split marginal negative log-likelihood is below this share of
#: the uniform one (log K): the heads of the hard world read their own attribute at 0.20-0.42 of log 3 and the others
#: at 0.99-1.02 of it on held-out data, although 0.94-0.96 on their training split (memorised, not read)
RELEVANCE_SHARE = 0.9


def class_attributes(label: np.ndarray, arrays: Mapping, n_classes: int) -> Dict[str, list]:
    """The class → attribute code mapping of a labelled split: ``{attribute: [code of class 0, …]}`` for every key of
    :data:`ATTRIBUTE_KEYS` present in ``arrays`` whose code is the same for all samples of a class and known for every
    class (an attribute that is not a function of the class is left out)."""
    out = {}
    label = np.asarray(label)
    for key in ATTRIBUTE_KEYS:
        if key not in arrays:
            continue
        codes = np.asarray(arrays[key])
        if codes.shape != label.shape:
            continue
        per = []
        for c in range(n_classes):
            vals = np.unique(codes[label == c])
            if len(vals) != 1 or vals[0] < 0:
                break
            per.append(int(vals[0]))
        if len(per) == n_classes and len(set(per)) > 1:
            out[key] = per
    return out


def attribute_relevance(probabilities: np.ndarray, label: np.ndarray, attributes: Mapping[str, list]) -> Dict:
    """Which attributes a unimodal head reads, measured on held-out data: per attribute the mean negative
    log-likelihood (nats) of the true value under the head's marginal ``p(a | x) = Σ_{c: a_c = a} p(c | x)``, next to
    the uniform ``log K``; ``used`` when below :data:`RELEVANCE_SHARE` of it.

    Args:
        probabilities: float (N, C) head outputs; label: int (N,) classes; attributes: :func:`class_attributes`.

    Returns:
        ``{attribute: {"val_nll": float, "uniform_nll": float, "used": bool}}``.
    """
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(label)
    out = {}
    for key, per in attributes.items():
        codes = np.asarray(per)
        marg = attribute_marginals(p, codes, int(codes.max()) + 1)
        nll = float(-np.log(np.maximum(marg[np.arange(len(y)), codes[y]], 1e-12)).mean()) if len(y) else math.nan
        uniform = math.log(len(set(per)))
        out[key] = {"val_nll": round(nll, 4), "uniform_nll": round(uniform, 4),
                    "used": bool(nll < RELEVANCE_SHARE * uniform)}
    return out


def _features(bundle_dir: str, manifest: Mapping, data, split: str):
    """modality → (features float32 (n, D*), labels int64 (n,)) of the labelled samples of ``split`` holding m."""
    from m2vae_fusion.core.bundle import Bundle
    from m2vae_fusion.training.export import _bounds_arrays

    sd, _ = _bounds_arrays(bundle_dir, manifest, data, split)
    b = Bundle.load(bundle_dir, check_sums=False)
    out = {}
    for i, m in enumerate(b.modalities):
        keep = sd.present[:, i] & (sd.label >= 0)
        x = sd.inputs[m][keep]
        feats = [b.encode_feature(m, x[j:j + 512])[0] for j in range(0, len(x), 512)]
        out[m] = (np.concatenate(feats) if feats else np.zeros((0, b.feature_dim), np.float32), sd.label[keep])
    return out


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, *, x_val=None, y_val=None, hidden: int = HIDDEN,
               epochs: int = EPOCHS, seed: int = 0, progress: Optional[str] = None):
    """Train one unimodal head: MLP ``D* → hidden → hidden → C`` (ReLU) with cross-entropy, Adam; temperature
    calibrated on (``x_val``, ``y_val``) when given. Returns the :class:`~m2vae_fusion.training.networks.ClassHead`
    -like module (``probabilities(x)``) in eval mode."""
    import torch
    from torch import nn

    from m2vae_fusion.training.trainer import calibrate_temperature, _progress

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    class UnimodalHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_classes))
            self.register_buffer("temperature", torch.ones(()))

        def forward(self, f):
            return self.net(f)

        def probabilities(self, f):
            return torch.softmax(self.net(f) / self.temperature, dim=-1)

    head = UnimodalHead()
    opt = torch.optim.Adam(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    epochs_iter = _progress(range(epochs), progress) if progress else range(epochs)
    for _ in epochs_iter:
        head.train()
        order = rng.permutation(len(xt))
        for j in range(0, len(order), BATCH):
            idx = torch.from_numpy(order[j:j + BATCH])
            loss = nn.functional.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    if x_val is not None and len(x_val):
        head.temperature.fill_(calibrate_temperature(head, np.asarray(x_val, np.float32),
                                                     np.asarray(y_val, np.int64)))
    return head


def add_unimodal_heads(bundle_dir: str, data, *, hidden: int = HIDDEN, epochs: int = EPOCHS, seed: int = 0,
                       progress: bool = True, log=print) -> Dict:
    """Train a unimodal class head per modality of the bundle in ``bundle_dir`` on ``data`` (a data set directory or
    ``{"train": arrays, "val": arrays}`` of raw shard arrays), export them as ``unimodal_head_<m>.onnx`` (input
    ``feature`` float32 (N, D*), output ``probabilities`` float32 (N, C)) and rewrite the manifest with the
    ``unimodal_heads`` block (files with sha256, training figures). Every other file is kept byte for byte; the
    format version and ``model_id`` do not change.

    Returns:
        the new manifest.

    Raises:
        BundleError: not a readable bundle, changed files (sums), a bundle without class names, or no labelled
            samples of a modality.
    """
    import torch

    from m2vae_fusion.core.bundle import read_manifest, verify_sums
    from m2vae_fusion.training.export import (_export_onnx, _order_manifest, _write_manifest, run_onnx,
                                              sha256_file)

    manifest = read_manifest(bundle_dir)
    verify_sums(bundle_dir, manifest)
    names = manifest.get("class_names")
    if not names:
        raise BundleError(f"{os.path.join(bundle_dir, 'manifest.json')}: no class_names; unimodal heads need a "
                          "labelled bundle")
    train_d = data["train"] if isinstance(data, Mapping) else data
    val_d = data["val"] if isinstance(data, Mapping) else data
    tr = _features(bundle_dir, manifest, train_d, "train")
    va = _features(bundle_dir, manifest, val_d, "val")
    block = {"hidden": int(hidden), "epochs": int(epochs), "seed": int(seed), "modalities": {}}
    if isinstance(val_d, Mapping):
        raw = val_d
    else:
        from m2vae_fusion.data import shards

        raw = shards.load_split(str(val_d), "val")
    attributes = class_attributes(raw["label"], raw, len(names)) if "label" in raw else {}
    if attributes:
        block["class_attributes"] = attributes
    for i, m in enumerate(manifest["modalities"]):
        x, y = tr[m]
        if len(x) < 20:
            raise BundleError(f"{train_d if isinstance(train_d, str) else 'data'}: {len(x)} labelled train samples "
                              f"of {m}; need at least 20 for a unimodal head")
        xv, yv = va[m]
        head = train_head(x, y, len(names), x_val=xv, y_val=yv, hidden=hidden, epochs=epochs, seed=seed + i,
                          progress=f"unimodal head {m}" if progress else None)

        class Probs(torch.nn.Module):
            def __init__(self, h):
                super().__init__()
                self.h = h

            def forward(self, f):
                return self.h.probabilities(f)

        fname = f"unimodal_head_{m}.onnx"
        path = os.path.join(bundle_dir, fname)
        example = torch.from_numpy(np.asarray(x[:4], np.float32))
        with torch.no_grad():
            want = Probs(head)(example).numpy()
        _export_onnx(Probs(head), (example,), path, ["feature"], ["probabilities"])
        got = run_onnx(path, {"feature": example.numpy()})["probabilities"]
        if not np.allclose(got, want, atol=1e-4):
            raise BundleError(f"{path}: ONNX differs from torch by {np.abs(got - want).max():.3g}")
        val_probs = run_onnx(path, {"feature": xv})["probabilities"] if len(xv) else None
        val_acc = float((val_probs.argmax(1) == yv).mean()) if len(xv) else math.nan
        block["modalities"][m] = {"file": fname, "sha256": sha256_file(path), "train_samples": int(len(x)),
                                  "val_samples": int(len(xv)), "val_accuracy": round(val_acc, 4),
                                  "temperature": round(float(head.temperature), 4)}
        if attributes and len(xv):
            rel = attribute_relevance(val_probs, yv, attributes)
            block["modalities"][m]["attributes"] = rel
        if log:
            used = [a for a, r in block["modalities"][m].get("attributes", {}).items() if r["used"]]
            log(f"unimodal head {m}: {len(x)} train samples, val accuracy {val_acc:.3f} ({len(names)} classes "
                f"from one sensor), T = {float(head.temperature):.3f}" + (f", reads {used}" if attributes else ""))
    manifest["unimodal_heads"] = block
    manifest = _order_manifest(manifest)
    _write_manifest(bundle_dir, manifest)
    return manifest
