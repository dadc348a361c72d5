"""The bimodal Mixture-of-Gaussians benchmark of Korthals et al., FUSION 2019 (Sec. IV, Sec. V-A, Fig. 3a/4, Table I).

Ten classes observed by two modalities:

- ``a``: points on a 2-D grid, σ_a = .06; classes (5, 6, 7) share one mean and (0, 8) another;
- ``b``: points on the unit circle, σ_b = .1; classes (0, 9) share one mean.

Every class is separable only when both modalities are observed. An M2VAE with latent size 2 (encoders
2 → 128/ReLU → 64/ReLU → 2 mean + 2 log-variance, ``q_ab`` one 64/ReLU fusion layer, mirror decoders; paper Sec. V-A)
is trained unsupervised; then **one** Gaussian naive Bayes classifier is fitted on the joint (ab) embeddings of the
training set and tested on the ab, a and b embeddings of the test set. The raw column uses three classifiers, one per
input (ab, a, b). Paper Table I: raw .99/.71/.90, M2VAE .99/.71/.90.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

PAPER_TABLE_I = {"raw": {"ab": 0.99, "a": 0.71, "b": 0.90}, "m2vae": {"ab": 0.99, "a": 0.71, "b": 0.90}}

#: class → grid cell of modality a (3×3 grid, spacing .3): (5, 6, 7) and (0, 8) share a cell
_A_CELL = {0: (0, 2), 8: (0, 2), 1: (0, 0), 2: (1, 0), 3: (2, 0), 4: (0, 1), 9: (1, 1), 5: (2, 1), 6: (2, 1),
           7: (2, 1)}

DEFAULTS = {
    "n_train_per_class": 1000,
    "n_test_per_class": 1000,
    "latent_dim": 2,
    "hidden": [128, 64],
    "fusion_hidden": 64,
    "beta_norm": 0.01,
    "alpha": 0.1,
    "alpha_reenc": 0.0,
    "epochs": 100,
    "batch_size": 128,
    "lr": 1.0e-3,
    "seed": 0,
}


def class_means() -> Tuple[np.ndarray, np.ndarray]:
    """Means (10, 2) of modality a (grid in [.2, .8]²) and b (unit circle; class 0 and 9 at angle 0)."""
    a = np.array([[0.2 + 0.3 * _A_CELL[c][0], 0.2 + 0.3 * _A_CELL[c][1]] for c in range(10)])
    ang = np.array([0.0] + [2 * math.pi * k / 9 for k in range(1, 9)] + [0.0])
    b = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return a, b


def make_mog(n_per_class: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """``{"a": (N, 2), "b": (N, 2), "y": (N,)}`` with N = 10·n_per_class (σ_a = .06, σ_b = .1)."""
    rng = np.random.default_rng(seed)
    ma, mb = class_means()
    y = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(y)
    a = ma[y] + rng.normal(0, 0.06, (len(y), 2))
    b = mb[y] + rng.normal(0, 0.1, (len(y), 2))
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "y": y.astype(np.int64)}


def train_m2vae(data: Mapping[str, np.ndarray], cfg: Mapping, progress: bool = True):
    """Train the bimodal M2VAE (paper Eq. 9-17; α, β_norm, optional re-encoding loss Eq. 19) on ``data``."""
    import torch

    from m2vae_fusion.training.losses import m2vae_loss
    from m2vae_fusion.training.networks import M2VAE

    torch.manual_seed(int(cfg["seed"]))
    model = M2VAE(["a", "b"], {"a": 2, "b": 2}, cfg["latent_dim"], cfg["hidden"], cfg["fusion_hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    xa, xb = torch.from_numpy(data["a"]), torch.from_numpy(data["b"])
    n = xa.shape[0]
    rng = np.random.default_rng(int(cfg["seed"]))
    epochs = range(int(cfg["epochs"]))
    if progress:
        from tqdm import tqdm
        epochs = tqdm(epochs, desc="MoG M2VAE", leave=False, mininterval=1.0)
    for _ in epochs:
        perm = torch.from_numpy(rng.permutation(n))
        for k in range(0, n, int(cfg["batch_size"])):
            idx = perm[k:k + int(cfg["batch_size"])]
            loss = m2vae_loss(model, {"a": xa[idx], "b": xb[idx]}, beta_norm=cfg["beta_norm"], alpha=cfg["alpha"],
                              alpha_reenc=cfg["alpha_reenc"])["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def embed(model, data: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Latent means of the ab, a and b encoders."""
    import torch

    with torch.no_grad():
        xs = {"a": torch.from_numpy(data["a"]), "b": torch.from_numpy(data["b"])}
        return {"ab": model.encode(("a", "b"), xs)[0].numpy(), "a": model.encode(("a",), xs)[0].numpy(),
                "b": model.encode(("b",), xs)[0].numpy()}


def run_benchmark(overrides: Optional[Mapping] = None, progress: bool = True) -> Dict:
    """Train and evaluate; returns ``{"raw": {ab, a, b}, "m2vae": {ab, a, b}, "paper": ..., "config": ...,
    "seconds": ...}``."""
    import torch
    from sklearn.naive_bayes import GaussianNB

    cfg = dict(DEFAULTS, **(overrides or {}))
    torch.set_num_threads(1)  # tiny MLPs: a second thread only adds synchronisation cost
    t0 = time.time()
    train = make_mog(int(cfg["n_train_per_class"]), int(cfg["seed"]))
    test = make_mog(int(cfg["n_test_per_class"]), int(cfg["seed"]) + 1)
    raw = {}
    for key, cols in (("ab", ("a", "b")), ("a", ("a",)), ("b", ("b",))):
        xtr = np.concatenate([train[c] for c in cols], axis=1)
        xte = np.concatenate([test[c] for c in cols], axis=1)
        raw[key] = float(GaussianNB().fit(xtr, train["y"]).score(xte, test["y"]))
    model = train_m2vae(train, cfg, progress)
    t_train = time.time() - t0
    etr, ete = embed(model, train), embed(model, test)
    clf = GaussianNB().fit(etr["ab"], train["y"])  # one classifier, fitted on the joint embeddings only
    m2 = {k: float(clf.score(ete[k], test["y"])) for k in ("ab", "a", "b")}
    return {"raw": raw, "m2vae": m2, "paper": PAPER_TABLE_I, "config": cfg,
            "seconds": {"train": round(t_train, 1), "total": round(time.time() - t0, 1)}}


def format_table(res: Mapping) -> str:
    lines = ["MoG (FUSION 2019, Table I): naive Bayes classification rate",
             f"{'input':<6}{'raw':>8}{'M2VAE':>8}{'paper raw':>11}{'paper M2VAE':>13}"]
    for k, name in (("ab", "a&b"), ("a", "a"), ("b", "b")):
        lines.append(f"{name:<6}{res['raw'][k]:>8.3f}{res['m2vae'][k]:>8.3f}"
                     f"{PAPER_TABLE_I['raw'][k]:>11.2f}{PAPER_TABLE_I['m2vae'][k]:>13.2f}")
    return "\n".join(lines)
