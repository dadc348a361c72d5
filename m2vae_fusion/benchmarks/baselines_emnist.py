"""``m2vae-fusion bench baselines --sets emnist``: issue 11 part (c), the e-MNIST experiment of the M2VAE ICLR 2019
draft (anonymous submission, Sec. 4.1 "entangled-MNIST", Sec. 5.3 and Table 1, Fig. 2, App. 6.1.4 Tables 2-3) from
real data sets (:mod:`m2vae_fusion.data.emnist`: scikit-learn's 8×8 digits as modality ``a``, Fashion-MNIST pooled to
14×14 as modality ``b``).

Three pairings of the two sets, each with ten classes (digit ``c`` ↔ article ``c``), per seed:

- ``entangled`` (the draft's e-MNIST, Sec. 4.1): one class-conditional VAE (CVAE, Kingma et al. 2014; App. Table 3)
  per real set, both with a 2-D latent and the unit Gaussian prior; a pair is ``(E[p_a(a|z, c)], E[p_b(b|z, c)])``
  for ONE shared draw ``z ~ N(0, I)`` restricted to ``|z_i| ≤ 2`` ("only samples from within 2σ of the prior") and
  a class ``c``: both images then vary together with ``z`` (the continuity the draft asks of multimodal data);
- ``shuffled`` (the draft's me-MNIST, Sec. 4.1: "we shuffle the generated fashion-MNIST per class label of e-MNIST"):
  the same generated images, ``b`` permuted within each class, the draft's fair ELBO comparison;
- ``real`` (the draft's naive m-MNIST): real digits paired with randomly drawn real Fashion-MNIST images of the same
  class (train with train, test with test).

Every objective in ``--objectives`` is trained on every pairing and seed with the MoG part's trainer
(:func:`m2vae_fusion.benchmarks.baselines.train_ours`, the project's β = β_norm · D_S / D_z, β_norm = 0.01, α =
0.1) on the draft's networks (Table 2: 128/ReLU → 64/ReLU experts, 64/ReLU fusion layer, D_z = 2) with the
objectives' Gaussian likelihood σ² = ½ instead of the draft's BCE. That likelihood is made for unit-variance features,
so by default (``--emnist-scale standard``, :func:`standardise`) each modality is centred per pixel and divided by
the root of its mean pixel variance, with linear decoder outputs: on raw [0, 1] pixels (``--emnist-scale none``,
sigmoid outputs; mean pixel variance ≈ 0.03-0.1) a reconstruction error costs 10-30× less than on the features, the
within-class variation of the images is almost free to ignore and the latent keeps little but the class. Scores on
the test pairs:

- the ELBO of every subset, the draft's Eq. 12: ``L_S = E_{q_S(z|x_S)}[log p(a|z) + log p(b|z) + log p(z) −
  log q_S(z|x_S)]`` (encode the subset, decode *both* modalities; β = 1), nats per pair, estimated with
  ``--emnist-elbo-samples`` draws of the objective's *exact* posterior (the mixture itself for mmvae/mopoe, whose
  log-density is the log-mean of the components'). Absolute values are not comparable with the draft's Table 1
  (8×8 digits, 14×14 articles, Gaussian instead of Bernoulli likelihood), so the table gives the rank of every
  objective per subset too;
- the latent classification accuracy of the MoG part (FUSION 2019 Table I protocol): one Gaussian naive Bayes fitted
  on the joint (ab) latent means of the training pairs, scored on the ab, a and b latent means of the test pairs
  (:func:`m2vae_fusion.benchmarks.baselines.naive_bayes`); chance is 0.1, the raw-pixel naive Bayes is printed too.

Means over seeds with a 95 % Student-t interval. ``plot`` draws the draft's Fig. 2: CVAE latent spaces of the two
real sets, generated e-MNIST pairs along one latent factor next to naive real pairs, and the latent means of the ab,
a and b encoders of every objective on every pairing (first seed).

Time (defaults, 3 seeds, 5 objectives, 3 pairings = 45 training runs of 2-19 s CPU + 6 CVAEs of ≈ 11 s): 10 min 45 s
wall, 414 s CPU, on the shared 2-core machine at load 3.4-6.4; ``--emnist-quick`` (30 epochs, 250 pairs/class, 30
CVAE epochs, 500 articles/class): 4.5 min wall.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Dict, List, Mapping, Sequence

import numpy as np

from m2vae_fusion.benchmarks.baselines import DEFAULTS as _MOG_DEFAULTS

PAIRINGS = ("entangled", "shuffled", "real")
PAIRING_TITLES = {"entangled": "e-MNIST (entangled: CVAEs, one shared z)",
                  "shuffled": "me-MNIST (generated, b shuffled within class)",
                  "real": "m-MNIST (naive: real images paired by class)"}
KEYS = ("ab", "a", "b")

#: the MoG part's networks, objective weights and optimiser (every set compares the objectives on the same terms),
#: with e-MNIST's own budget and data settings
DEFAULTS = {
    **{k: copy.deepcopy(_MOG_DEFAULTS[k]) for k in ("latent_dim", "hidden", "fusion_hidden", "beta_norm", "alpha", "alpha_reenc",
                                     "batch_size", "lr")},
    "epochs": 50,
    "output_activation": None,
    "scale": "standard",
    "pairs_per_class": 500,
    "cvae_epochs": 50,
    "cvae_hidden": [128, 64],
    "fashion_per_class": 1000,
    "elbo_samples": 8,
}
QUICK = {"epochs": 30, "pairs_per_class": 250, "cvae_epochs": 30, "fashion_per_class": 500}
#: the draft's Table 1 (Sec. 5.3): ELBOs (higher is better) on its 28×28 e-MNIST, D_z = 2
DRAFT_TABLE1 = {"m2vae": {"ab": -10.75, "a": -10.91, "b": -16.01},
                "tvae": {"ab": -23.6, "a": -101.28, "b": -88.75},
                "jmvae-zero": {"ab": -24.19, "a": -131.05, "b": -99.71}}
#: the draft's Fig. 2 caption: the JMVAE's L_ab on me-MNIST vs e-MNIST
DRAFT_FIG2 = {"shuffled": -204.48, "entangled": -199.23}
PLOT_POINTS = 400


def configure(parser):
    """The part's own options (all ``--emnist-*``)."""
    parser.add_argument("--emnist-data", metavar="DIR|FILE.npz",
                        help="Fashion-MNIST: directory with the four *-ubyte.gz files (default "
                             "/usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist, installed by "
                             "scripts/install_bench_data.sh) or a fixture .npz (x uint8 (N,14,14), y)")
    parser.add_argument("--emnist-epochs", type=int, help="epochs per objective run (default 50; quick 30)")
    parser.add_argument("--emnist-pairs-per-class", type=int,
                        help="training pairs per class (default 500; quick 250); test pairs: a third of it; the real "
                             "pairing has at most the digits there are (~120 train, ~60 test per class)")
    parser.add_argument("--emnist-cvae-epochs", type=int, help="epochs of each CVAE (default 50; quick 30)")
    parser.add_argument("--emnist-fashion-per-class", type=int,
                        help="Fashion-MNIST training images per class for its CVAE (default 1000; quick 500)")
    parser.add_argument("--emnist-pairings", default=",".join(PAIRINGS),
                        help="comma-separated pairings: entangled (e-MNIST), shuffled (me-MNIST), real (m-MNIST); "
                             "default all three")
    parser.add_argument("--emnist-elbo-samples", type=int, default=DEFAULTS["elbo_samples"],
                        help="posterior draws per test pair for the ELBO (default 8)")
    parser.add_argument("--emnist-scale", choices=("standard", "none"), default="standard",
                        help="standard (default): every modality centred per pixel and divided by one number, the "
                             "root of its mean pixel variance, so the objectives' Gaussian likelihood (σ² = ½, made "
                             "for unit-variance features) sees unit-variance data, linear decoder outputs; none: "
                             "pixels in [0, 1] with sigmoid decoder outputs")
    parser.add_argument("--emnist-alpha", type=float,
                        help="weight α of the m2vae and jmvae mutual KL terms (default 0.1, the project's)")
    parser.add_argument("--emnist-quick", action="store_true",
                        help="the quick budget (30 epochs, 250 pairs/class, 30 CVAE epochs, 500 articles/class)")


def config_from(args) -> dict:
    """The run's configuration from the ``--emnist-*`` options (explicit values beat ``--emnist-quick``).

    Raises:
        UserError: a non-positive count or an unknown pairing.
    """
    from m2vae_fusion.errors import UserError

    cfg = dict(DEFAULTS)
    if getattr(args, "emnist_quick", False):
        cfg.update(QUICK)
    for key in ("epochs", "pairs_per_class", "cvae_epochs", "fashion_per_class", "elbo_samples"):
        v = getattr(args, f"emnist_{key}", None)
        if v is not None:
            if v <= 0:
                raise UserError(f"--emnist-{key.replace('_', '-')} must be positive (got {v})")
            cfg[key] = int(v)
    pairings = [p.strip() for p in (getattr(args, "emnist_pairings", None) or ",".join(PAIRINGS)).split(",")
                if p.strip()]
    for p in pairings:
        if p not in PAIRINGS:
            raise UserError(f"--emnist-pairings: unknown pairing {p!r} (expected some of {', '.join(PAIRINGS)})")
    if not pairings:
        raise UserError("--emnist-pairings: no pairing given")
    cfg["pairings"] = pairings
    if getattr(args, "emnist_alpha", None) is not None:
        if not args.emnist_alpha >= 0:
            raise UserError(f"--emnist-alpha must be ≥ 0 (got {args.emnist_alpha})")
        cfg["alpha"] = float(args.emnist_alpha)
    cfg["scale"] = getattr(args, "emnist_scale", None) or "standard"
    cfg["output_activation"] = None if cfg["scale"] == "standard" else "sigmoid"
    cfg["n_test_per_class"] = max(5, cfg["pairs_per_class"] // 3)
    cfg["quick"] = bool(getattr(args, "emnist_quick", False))
    return cfg


# ------------------------------------------------------------------------------------------------------ CVAE

def build_cvae(input_dim: int, n_classes: int, latent_dim: int, hidden: Sequence[int]):
    """The class-conditional VAE that makes e-MNIST (draft Sec. 4.1, App. Table 3: the one-hot label concatenated to
    the encoder's features and to ``z``): encoder ``[x, onehot(c)] → hidden (ReLU) → (μ, log σ²)`` (D_z), decoder
    ``[z, onehot(c)] → reversed hidden (ReLU) → D_x`` logits (Bernoulli means after a sigmoid). Fully connected, not
    the draft's convolutions (CPU budget; 8×8 and 14×14 inputs)."""
    import torch
    from torch import nn

    def mlp(sizes):
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class CVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_classes = n_classes
            self.enc = mlp([input_dim + n_classes, *hidden, 2 * latent_dim])
            self.dec = mlp([latent_dim + n_classes, *list(hidden)[::-1], input_dim])

        def onehot(self, c):
            return torch.nn.functional.one_hot(c, self.n_classes).to(torch.float32)

        def encode(self, x, c):
            h = self.enc(torch.cat([x, self.onehot(c)], 1))
            return h.chunk(2, dim=1)

        def decode_logits(self, z, c):
            return self.dec(torch.cat([z, self.onehot(c)], 1))

    return CVAE()


def train_cvae(x: np.ndarray, y: np.ndarray, cfg: Mapping, seed: int):
    """Train one CVAE on real images ``x`` (N, D) in [0, 1] with classes ``y``: the plain (β = 1) ELBO with the
    draft's BCE reconstruction (App. 6.1.4), Adam, ``cfg["cvae_epochs"]`` epochs. Returns the model (eval mode)."""
    import torch

    from m2vae_fusion.training.losses import gaussian_kl, reconstruction_nll, reparameterize

    torch.manual_seed(seed)
    model = build_cvae(x.shape[1], 10, cfg["latent_dim"], cfg["cvae_hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(int(cfg["cvae_epochs"])):
        perm = rng.permutation(len(x))
        for k in range(0, len(x), int(cfg["batch_size"])):
            t = torch.from_numpy(perm[k:k + int(cfg["batch_size"])])
            mu, lv = model.encode(xt[t], yt[t])
            z = reparameterize(mu, lv)
            loss = (reconstruction_nll("bernoulli", xt[t], model.decode_logits(z, yt[t]))
                    + gaussian_kl(mu, lv)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def truncated_prior(n: int, dim: int, rng: np.random.Generator, bound: float = 2.0) -> np.ndarray:
    """``n`` draws of ``N(0, I_dim)`` with every coordinate within ``±bound`` (rejection per coordinate; the draft's
    "only samples from within 2σ of the prior")."""
    z = rng.standard_normal((n, dim))
    bad = np.abs(z) > bound
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > bound
    return z.astype(np.float32)


def generate(cvae_a, cvae_b, n_per_class: int, rng: np.random.Generator, latent_dim: int) -> Dict[str, np.ndarray]:
    """e-MNIST pairs (draft Sec. 4.1): for each class ``c`` ``n_per_class`` shared draws ``z`` (:func:`truncated_prior`);
    ``a = σ(dec_a(z, c))``, ``b = σ(dec_b(z, c))`` (the Bernoulli means, float32 in [0, 1]). Also returns ``z``."""
    import torch

    y = np.repeat(np.arange(10), n_per_class).astype(np.int64)
    z = truncated_prior(len(y), latent_dim, rng)
    with torch.no_grad():
        zt, yt = torch.from_numpy(z), torch.from_numpy(y)
        a = torch.sigmoid(cvae_a.decode_logits(zt, yt)).numpy().astype(np.float32)
        b = torch.sigmoid(cvae_b.decode_logits(zt, yt)).numpy().astype(np.float32)
    return {"a": a, "b": b, "y": y, "z": z}


def shuffle_within_class(data: Mapping[str, np.ndarray], rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """me-MNIST (draft Sec. 4.1): ``b`` permuted within each class, ``a`` and the labels kept."""
    b = data["b"].copy()
    for c in np.unique(data["y"]):
        idx = np.flatnonzero(data["y"] == c)
        b[idx] = data["b"][rng.permutation(idx)]
    return {"a": data["a"], "b": b, "y": data["y"]}


def pair_real(digits_x, digits_y, fashion_x, fashion_y, n_per_class: int, rng: np.random.Generator):
    """m-MNIST, the naive pairing (draft Sec. 4.1, Fig. 2 top-left): up to ``n_per_class`` real digits of each class,
    each with a random real Fashion-MNIST image of the same class (drawn without replacement while there are
    enough)."""
    from m2vae_fusion.data.emnist import per_class

    a, y = per_class(digits_x, digits_y, n_per_class, rng)
    b = np.empty((len(y), fashion_x.shape[1]), dtype=np.float32)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        pool = np.flatnonzero(fashion_y == c)
        pick = rng.choice(pool, size=len(idx), replace=len(idx) > len(pool))
        b[idx] = fashion_x[pick]
    return {"a": a.astype(np.float32), "b": b, "y": y}


# ------------------------------------------------------------------------------------------------- scoring

def posterior_components(model, subset: str, xs) -> list:
    """The exact posterior ``q_S(z|x_S)`` of ``subset`` as a list of equally weighted Gaussian components
    ((mean, log_variance), (N, D_z) each): one for m2vae/jmvae (own encoder) and mvae (product of experts with the
    prior expert); the mixture's components for mmvae (the experts, Shi et al. 2019 Eq. 2) and mopoe (the PoEs of
    every non-empty subset, with the prior expert for the full set, Sutter et al. 2021 Eq. 5), as their ``combine``
    does before moment matching."""
    from m2vae_fusion.training.objectives import base

    s = tuple(subset)
    name = getattr(model, "objective", "m2vae")
    if len(s) == 1 or name not in ("mmvae", "mopoe"):
        return [model.encode(s, xs)]
    experts = {m: model.expert(m, xs) for m in s}
    if name == "mmvae":
        return [experts[m] for m in s]
    full = len(model.modalities)
    return [base.poe([experts[m] for m in k], prior_expert=len(k) == full) for k in base.nonempty_subsets(s)]


def elbo(model, data: Mapping[str, np.ndarray], n_samples: int, seed: int) -> Dict[str, float]:
    """Test ELBO per subset, the draft's Eq. 12: ``L_S = E_{q_S}[log p(a|z) + log p(b|z) + log N(z; 0, I) −
    log q_S(z|x_S)]`` with the objectives' likelihood (Gaussian, σ² = ½, normalising constant included,
    :func:`m2vae_fusion.training.losses.reconstruction_nll`), ``q_S`` the exact posterior
    (:func:`posterior_components`; a mixture draws its component uniformly), ``n_samples`` draws per pair; mean
    nats per pair (higher is better). Also ``kl_<S>``: its regulariser ``E_q[log q_S(z|x_S) − log p(z)]`` (the
    rest of ``L_S`` is the reconstruction of both modalities)."""
    import torch

    from m2vae_fusion.training.losses import reconstruction_nll
    from m2vae_fusion.training.objectives.base import gaussian_log_density

    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        xs = {"a": torch.from_numpy(data["a"]), "b": torch.from_numpy(data["b"])}
        n = xs["a"].shape[0]
        zeros = torch.zeros(n, model.latent_dim)
        for key in KEYS:
            comps = posterior_components(model, key, xs)
            total, kl = 0.0, 0.0
            for _ in range(int(n_samples)):
                pick = torch.randint(len(comps), (n,), generator=g)
                mu = torch.stack([c[0] for c in comps], 1)[torch.arange(n), pick]
                lv = torch.stack([c[1] for c in comps], 1)[torch.arange(n), pick]
                z = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=g)
                logq = torch.logsumexp(torch.stack([gaussian_log_density(z, *c) for c in comps], 1), 1) \
                    - math.log(len(comps))
                logp = sum(-reconstruction_nll("gaussian", xs[m], model.decode(m, z), with_constant=True)
                           for m in ("a", "b"))
                prior = gaussian_log_density(z, zeros, zeros)
                total += float((logp + prior - logq).mean())
                kl += float((logq - prior).mean())
            out[key] = total / int(n_samples)
            out[f"kl_{key}"] = kl / int(n_samples)
    return out


def raw_accuracy(train, test) -> Dict[str, float]:
    """Naive Bayes on the raw pixels (ab: both images concatenated), the reference row; ``var_smoothing`` 1e-2 (of
    the largest pixel variance) because border pixels are constant within a class."""
    from sklearn.naive_bayes import GaussianNB

    out = {}
    for key in KEYS:
        cols = tuple(key)
        xtr = np.concatenate([train[c] for c in cols], 1)
        xte = np.concatenate([test[c] for c in cols], 1)
        out[key] = float(GaussianNB(var_smoothing=1e-2).fit(xtr, train["y"]).score(xte, test["y"]))
    return out


def standardise(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]):
    """Centre every pixel on its training mean and divide each modality by ONE number ``s_m``, the root of its mean
    training pixel variance (so the average pixel variance is 1, the scale of the standardised features the
    objectives' Gaussian likelihood σ² = ½ is made for; design.md §2). One number, not one per pixel, so nearly
    constant border pixels are not amplified. Returns ``(train', test', log_jacobian)``, ``log_jacobian = −Σ_m D_m
    log s_m``: add it to an ELBO of the scaled data to get nats of the [0, 1] pixels (``log p(x) = log p(x') +
    log |dx'/dx|``)."""
    tr, te = dict(train), dict(test)
    logj = 0.0
    for m in ("a", "b"):
        mean = train[m].mean(0)
        scale = float(np.sqrt(train[m].var(0).mean()))
        tr[m] = ((train[m] - mean) / scale).astype(np.float32)
        te[m] = ((test[m] - mean) / scale).astype(np.float32)
        logj -= train[m].shape[1] * math.log(scale)
    return tr, te, logj


def run_one(name: str, train, test, cfg: Mapping, seed: int, keep_latents: bool, log_jacobian: float = 0.0) -> Dict:
    """Train objective ``name`` on ``train`` with the MoG part's trainer; accuracies (naive Bayes on latent means,
    FUSION 2019 Table I protocol) and ELBOs (:func:`elbo`, plus ``log_jacobian`` of :func:`standardise`: nats of the
    [0, 1] pixels) on ``test``. ``keep_latents``: also the test latent means (at most :data:`PLOT_POINTS`) for the
    plot."""
    from m2vae_fusion.benchmarks import baselines

    t0, w0 = time.process_time(), time.time()
    model = baselines.train_ours(name, train, cfg, seed)
    row = {"objective": name, "seed": seed, "train_cpu_s": round(time.process_time() - t0, 2),
           "train_wall_s": round(time.time() - w0, 2)}
    etr, ete = baselines.embeddings(model, train), baselines.embeddings(model, test)
    row.update(baselines.naive_bayes(etr["ab"], train["y"], ete, test["y"]))
    ms = baselines.mixture_samples(model, test, seed + 99)
    if ms is not None:
        row.update({f"exact_{k}": v for k, v in baselines.naive_bayes(etr["ab"], train["y"], ms, test["y"]).items()})
    for k, v in elbo(model, test, cfg["elbo_samples"], seed + 7).items():
        row[k if k.startswith("kl_") else f"elbo_{k}"] = v if k.startswith("kl_") else v + log_jacobian
    row.update(coherence(model, test))
    if keep_latents:
        keep = np.random.default_rng(0).permutation(len(test["y"]))[:PLOT_POINTS]
        row["latents"] = {k: np.round(ete[k][keep], 3).tolist() for k in KEYS}
        row["latents"]["y"] = test["y"][keep].tolist()
    return row


def coherence(model, data: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """How far each unimodal encoder is from the joint one on the test pairs: ``coh_<m>`` = mean
    ``KL(q_ab(z|a, b) ‖ q_m(z|m))`` (nats; the Gaussians the bundle carries, a mixture's moment-matched; the M2VAE
    pulls them together with its α-weighted mutual terms, FUSION 2019 Eq. 16-17). Large values mean a cross-modal
    ELBO (decode both modalities from ``q_m``) has to decode the other modality from the wrong place."""
    import torch

    from m2vae_fusion.training.losses import gaussian_kl

    with torch.no_grad():
        xs = {"a": torch.from_numpy(data["a"]), "b": torch.from_numpy(data["b"])}
        qab = model.encode(("a", "b"), xs)
        return {f"coh_{m}": float(gaussian_kl(*qab, *model.encode((m,), xs)).mean()) for m in ("a", "b")}


def ranks(summary: Sequence[Mapping], key: str) -> Dict[str, int]:
    """Rank (1 = highest mean) of every objective by ``key``'s mean; NaN last."""
    vals = [(s["objective"], s[key]["mean"]) for s in summary]
    order = sorted(vals, key=lambda t: -t[1] if t[1] == t[1] else math.inf)
    return {name: i + 1 for i, (name, _) in enumerate(order)}


def summarise(rows: Sequence[Mapping]) -> list:
    """Per objective: mean ± 95 % interval of every accuracy, ELBO and the training time."""
    from m2vae_fusion.benchmarks.baselines import interval

    groups: Dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["objective"], []).append(r)
    out = []
    for name, rs in groups.items():
        s = {"objective": name, "seeds": [r["seed"] for r in rs]}
        for k in [*KEYS, *(f"exact_{k}" for k in KEYS), *(f"elbo_{k}" for k in KEYS), *(f"kl_{k}" for k in KEYS),
                  "coh_a", "coh_b", "train_cpu_s"]:
            if all(k in r for r in rs):
                s[k] = interval([r[k] for r in rs])
        out.append(s)
    if out:
        for k in KEYS:
            for name, rk in ranks(out, f"elbo_{k}").items():
                next(s for s in out if s["objective"] == name)[f"rank_{k}"] = rk
    return out


# --------------------------------------------------------------------------------------------------- driver

def load_data(cfg: Mapping, path: str | None):
    """The real sets (:mod:`m2vae_fusion.data.emnist`); UserError with the install command when Fashion-MNIST is
    missing."""
    from m2vae_fusion.data.emnist import load_digits_split, load_fashion

    return load_digits_split(), load_fashion(path)


def make_pairings(digits, fashion, cfg: Mapping, seed: int, want_examples: bool):
    """Train the two CVAEs of ``seed`` and build the pairings of ``cfg["pairings"]`` (train, test). Returns
    ``(sets, extras)``: ``sets[pairing] = (train, test)``; ``extras`` has the CVAEs' training time and, with
    ``want_examples``, the Fig. 2 material (CVAE latent means of real test images, example pairs)."""
    import torch

    from m2vae_fusion.data.emnist import per_class

    rng = np.random.default_rng(10_000 + seed)
    extras: Dict = {}
    sets: Dict = {}
    need_gen = any(p in cfg["pairings"] for p in ("entangled", "shuffled"))
    if need_gen:
        t0 = time.process_time()
        fx, fy = per_class(fashion["train_x"], fashion["train_y"], cfg["fashion_per_class"], rng)
        cvae_a = train_cvae(digits["train_x"], digits["train_y"], cfg, seed)
        cvae_b = train_cvae(fx, fy, cfg, seed + 1)
        extras["cvae_cpu_s"] = round(time.process_time() - t0, 2)
        gtr = generate(cvae_a, cvae_b, cfg["pairs_per_class"], rng, cfg["latent_dim"])
        gte = generate(cvae_a, cvae_b, cfg["n_test_per_class"], rng, cfg["latent_dim"])
        if "entangled" in cfg["pairings"]:
            sets["entangled"] = (gtr, gte)
        if "shuffled" in cfg["pairings"]:
            sets["shuffled"] = (shuffle_within_class(gtr, rng), shuffle_within_class(gte, rng))
        if want_examples:
            with torch.no_grad():
                lat = {}
                for m, cv, src in (("a", cvae_a, digits), ("b", cvae_b, fashion)):
                    keep = np.random.default_rng(1).permutation(len(src["test_y"]))[:PLOT_POINTS]
                    mu, _ = cv.encode(torch.from_numpy(src["test_x"][keep]), torch.from_numpy(src["test_y"][keep]))
                    lat[m] = np.round(mu.numpy(), 3).tolist()
                    lat[f"y_{m}"] = src["test_y"][keep].tolist()
                extras["cvae_latents"] = lat
                steps = np.linspace(-2.0, 2.0, 8, dtype=np.float32)
                z = np.stack([steps, np.zeros_like(steps)], 1)[:, :cfg["latent_dim"]]
                if cfg["latent_dim"] > 2:
                    z = np.concatenate([z, np.zeros((8, cfg["latent_dim"] - 2), np.float32)], 1)
                ex = {"a": [], "b": []}
                for c in range(10):
                    zt = torch.from_numpy(z)
                    ct = torch.full((8,), c, dtype=torch.int64)
                    ex["a"].append(np.round(torch.sigmoid(cvae_a.decode_logits(zt, ct)).numpy(), 3).tolist())
                    ex["b"].append(np.round(torch.sigmoid(cvae_b.decode_logits(zt, ct)).numpy(), 3).tolist())
                extras["examples_entangled"] = ex
    if "real" in cfg["pairings"] or want_examples:
        rtr = pair_real(digits["train_x"], digits["train_y"], fashion["train_x"], fashion["train_y"],
                        cfg["pairs_per_class"], rng)
        rte = pair_real(digits["test_x"], digits["test_y"], fashion["test_x"], fashion["test_y"],
                        cfg["n_test_per_class"], rng)
        if "real" in cfg["pairings"]:
            sets["real"] = (rtr, rte)
        if want_examples:
            ex = {"a": [], "b": []}
            for c in range(10):
                idx = np.flatnonzero(rte["y"] == c)[:8]
                ex["a"].append(np.round(rte["a"][idx], 3).tolist())
                ex["b"].append(np.round(rte["b"][idx], 3).tolist())
            extras["examples_real"] = ex
    return sets, extras


def run_set(args, names: Sequence[str], seeds: Sequence[int]) -> dict:
    """Part (c): every pairing × seed × objective; the result dict (``table``: the printed text)."""
    import torch

    cfg = config_from(args)
    torch.set_num_threads(1)
    t_start = time.time()
    digits, fashion = load_data(cfg, getattr(args, "emnist_data", None))
    rows: Dict[str, list] = {p: [] for p in cfg["pairings"]}
    raw: Dict[str, dict] = {}
    sizes: Dict[str, dict] = {}
    cvae_cpu = []
    fig2: Dict = {}
    for seed in seeds:
        first = seed == seeds[0]
        sets, extras = make_pairings(digits, fashion, cfg, seed, want_examples=first)
        if "cvae_cpu_s" in extras:
            cvae_cpu.append(extras["cvae_cpu_s"])
        if first:
            fig2 = {k: v for k, v in extras.items() if k != "cvae_cpu_s"}
        for p in cfg["pairings"]:
            train, test = sets[p]
            if first:
                raw[p] = raw_accuracy(train, test)
                sizes[p] = {"train": int(len(train["y"])), "test": int(len(test["y"]))}
            logj = 0.0
            if cfg["scale"] == "standard":
                train, test, logj = standardise(train, test)
            for name in names:
                r = run_one(name, train, test, cfg, seed, keep_latents=first, log_jacobian=logj)
                r["pairing"] = p
                rows[p].append(r)
                print(f"emnist {p:<9} seed {seed} {name:<6} acc ab {r['ab']:.3f} a {r['a']:.3f} b {r['b']:.3f}  "
                      f"ELBO ab {r['elbo_ab']:.1f} a {r['elbo_a']:.1f} b {r['elbo_b']:.1f} "
                      f"({r['train_cpu_s']:.1f} s CPU)", flush=True)
    latents = {p: {r["objective"]: r.pop("latents") for r in rows[p] if "latents" in r} for p in rows}
    res = {"part": "c: e-MNIST from real data sets (M2VAE ICLR draft Sec. 4.1, 5.3, Fig. 2)", "seeds": list(seeds),
           "objectives": list(names), "config": cfg,
           "data": {"a": f"{digits['source']} (8x8, {len(digits['train_y'])} train / {len(digits['test_y'])} test)",
                    "b": f"Fashion-MNIST 14x14 from {fashion['source']} ({len(fashion['train_y'])} train / "
                         f"{len(fashion['test_y'])} test)",
                    "pairs": sizes},
           "raw": raw, "runs": rows, "summary": {p: summarise(rows[p]) for p in rows},
           "cvae_cpu_s": cvae_cpu, "latents": latents, "fig2": fig2,
           "draft": {"table1": DRAFT_TABLE1, "fig2_jmvae_elbo_ab": DRAFT_FIG2},
           "seconds": round(time.time() - t_start, 1)}
    res["table"] = format_table(res)
    return res


def format_table(res: Mapping) -> str:
    """One table per pairing: accuracies (ab, a, b), ELBOs (ab, a, b) with the rank of each objective, train time."""
    from m2vae_fusion.benchmarks.common import table

    def cell(d, fmt="{:.3f}"):
        if d is None:
            return "-"
        ci = "nan" if d["ci95"] != d["ci95"] else fmt.format(d["ci95"])
        return f"{fmt.format(d['mean'])} ± {ci}"

    n = len(res["seeds"])
    cfg = res["config"]
    out = []
    for p, summary in res["summary"].items():
        body = []
        for s in summary:
            body.append([s["objective"], *(cell(s.get(k)) for k in KEYS),
                         *(f"{cell(s.get(f'elbo_{k}'), '{:.1f}')} ({s.get(f'rank_{k}', '-')})" for k in KEYS),
                         cell(s.get("train_cpu_s"), "{:.1f}")])
        raw = res["raw"].get(p)
        if raw:
            body.append(["raw pixels", *(f"{raw[k]:.3f}" for k in KEYS), "", "", "", ""])
        sz = res["data"]["pairs"].get(p, {})
        diag = [[s["objective"], *(cell(s.get(f"kl_{k}"), "{:.1f}") for k in KEYS),
                 *(cell(s.get(f"coh_{m}"), "{:.1f}") for m in ("a", "b"))] for s in summary]
        out.append(table(["objective", "acc ab", "acc a", "acc b", "ELBO ab (rank)", "ELBO a (rank)",
                          "ELBO b (rank)", "train CPU s"], body,
                         f"e-MNIST part, {PAIRING_TITLES[p]}: {sz.get('train', '?')} train / {sz.get('test', '?')} "
                         f"test pairs; naive Bayes on latent means (chance 0.100) and test ELBO (nats/pair, draft "
                         f"Eq. 12, higher is better); {n} seed(s), mean ± 95 % interval; {cfg['epochs']} epochs, "
                         f"α = {cfg['alpha']:g}"))
        out.append(table(["  objective", "KL(q_ab‖p)", "KL(q_a‖p)", "KL(q_b‖p)", "KL(q_ab‖q_a)", "KL(q_ab‖q_b)"],
                         [["  " + r[0], *r[1:]] for r in diag],
                         "  the ELBOs' regularisers E_q[log q_S − log p(z)] and the distance of each unimodal encoder "
                         "from the joint one (nats)"))
    out.append("draft Table 1 (28x28 e-MNIST, BCE; not comparable in value, compare ranks): M2VAE -10.75/-10.91/"
               "-16.01 > tVAE -23.6/-101.28/-88.75 > JMVAE-Zero -24.19/-131.05/-99.71 (ab/a/b); Fig. 2: JMVAE L_ab "
               "me-MNIST -204.48 < e-MNIST -199.23")
    if "entangled" in res["summary"] and "shuffled" in res["summary"]:
        e = {s["objective"]: s["elbo_ab"]["mean"] for s in res["summary"]["entangled"]}
        sh = {s["objective"]: s["elbo_ab"]["mean"] for s in res["summary"]["shuffled"]}
        out.append("L_ab entangled − shuffled (nats, > 0: the entangled pairs are the easier joint density, as the "
                   "draft's Fig. 2): " + ", ".join(f"{k} {e[k] - sh[k]:+.1f}" for k in e if k in sh))
    return "\n".join(out)


def plot(res: Mapping, path: str) -> None:
    """The draft's Fig. 2 for this run (first seed): top row the CVAE latent means of real test images (a: digits,
    b: Fashion-MNIST), generated e-MNIST pairs along the first latent factor (z_1 from −2 to 2) and naive real pairs;
    below, for every objective, the latent means of its ab, a and b encoders on the test pairs of each pairing,
    coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairings = list(res["summary"])
    names = list(res["objectives"])
    ncol = max(4, 3 * len(pairings))
    fig, axes = plt.subplots(1 + len(names), ncol, figsize=(2.1 * ncol, 2.1 * (1 + len(names))), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    f2 = res.get("fig2", {})
    col = 0
    lat = f2.get("cvae_latents")
    if lat:
        for m, title in (("a", "CVAE latent: digits (a)"), ("b", "CVAE latent: Fashion (b)")):
            z = np.asarray(lat[m])
            axes[0, col].scatter(z[:, 0], z[:, 1], c=cmap(np.asarray(lat[f"y_{m}"]) % 10), s=3)
            axes[0, col].set_title(title, fontsize=7)
            col += 1

    def mosaic(ex, title):
        nonlocal col
        if not ex or col + 1 >= ncol:
            return
        for m, side in (("a", 8), ("b", 14)):
            rows_ = []
            for c in range(len(ex[m])):
                imgs = [np.asarray(v).reshape(side, side) for v in ex[m][c]]
                imgs += [np.zeros((side, side))] * (8 - len(imgs))
                rows_.append(np.concatenate(imgs, 1))
            axes[0, col].imshow(np.concatenate(rows_, 0), cmap="gray", vmin=0, vmax=1)
            axes[0, col].set_title(f"{title} {m}", fontsize=7)
            col += 1

    mosaic(f2.get("examples_entangled"), "e-MNIST (z1: -2..2)")
    mosaic(f2.get("examples_real"), "m-MNIST (real)")
    for ax in axes[0, col:]:
        ax.axis("off")
    for i, name in enumerate(names):
        for j, p in enumerate(pairings):
            lt = res["latents"].get(p, {}).get(name)
            for k, key in enumerate(KEYS):
                ax = axes[1 + i, 3 * j + k]
                if lt is None:
                    ax.axis("off")
                    continue
                z = np.asarray(lt[key])
                ax.scatter(z[:, 0], z[:, 1], c=cmap(np.asarray(lt["y"]) % 10), s=2)
                ax.set_title(f"{name} {p} q_{key}", fontsize=7)
        for ax in axes[1 + i, 3 * len(pairings):]:
            ax.axis("off")
    fig.suptitle("e-MNIST part (draft Fig. 2): CVAE latents, pairs, and every objective's latent means "
                 f"(seed {res['seeds'][0]}; colour = class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
