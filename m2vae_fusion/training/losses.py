"""Loss pieces of the β-VAEs and the M2VAE (torch). Every function returns per-sample values (N,) so that samples
with missing modalities can be masked (docs/formats.md ``present``).

References: Korthals et al., FUSION 2019 ("paper"), Korthals, arXiv 1903.07303 ("derivation"), design.md §2.

Sign convention: losses are *negative* ELBO pieces (to be minimised).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from m2vae_fusion.training.networks import Subset, subset_key, subsets_of

#: Gaussian likelihood of the feature decoders: ``p(x|z) = N(x; x', σ² = 1/2)``, i.e. ``-log p = Σ (x − x')² +
#: ½ log π`` per value: squared error plus a constant that only the reported ELBO includes.
GAUSS_LOG_NORM = 0.5 * math.log(math.pi)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: Optional[torch.Tensor] = None,
                logvar_p: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Closed-form ``KL(N(mu_q, e^{logvar_q}) ‖ N(mu_p, e^{logvar_p}))`` of diagonal Gaussians, summed over the last
    axis (derivation Eq. 92): ``½ Σ [logvar_p − logvar_q + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1]``.

    ``mu_p``/``logvar_p`` ``None`` means the unit Gaussian prior ``p(z) = N(0, I)`` (paper Eq. 1 regulariser).
    """
    if mu_p is None:
        return 0.5 * torch.sum(torch.exp(logvar_q) + mu_q ** 2 - 1.0 - logvar_q, dim=-1)
    return 0.5 * torch.sum(logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)
                           - 1.0, dim=-1)


def reconstruction_nll(likelihood: str, target: torch.Tensor, output: torch.Tensor,
                       with_constant: bool = False) -> torch.Tensor:
    """``-log p(x|z)`` summed over all non-batch axes (the paper's reconstruction term, Eq. 1).

    Args:
        likelihood: ``bernoulli`` (``output`` are logits; continuous BCE for targets in [0, 1]) or ``gaussian``
            (``output`` is the mean; ``σ² = 1/2``, see :data:`GAUSS_LOG_NORM`).
        with_constant: include the Gaussian normalising constant (for reported ELBOs).
    """
    n = target.shape[0]
    if likelihood == "bernoulli":
        v = F.binary_cross_entropy_with_logits(output, target, reduction="none")
        return v.reshape(n, -1).sum(1)
    if likelihood == "gaussian":
        v = ((target - output) ** 2).reshape(n, -1)
        out = v.sum(1)
        if with_constant:
            out = out + GAUSS_LOG_NORM * v.shape[1]
        return out
    raise ValueError(f"unknown likelihood {likelihood!r}")


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``z = μ + σ·ε``, ε ~ N(0, I) (SGVB, Kingma & Welling; paper Sec. II)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def beta_from_norm(beta_norm: float, input_dim: int, latent_dim: int) -> float:
    """``β = β_norm · D_x / D_z`` (paper Sec. III-A; design.md §2 "β normalisation")."""
    return float(beta_norm) * float(input_dim) / float(latent_dim)


# ----------------------------------------------------------------------------------------------------- β-VAE

def betavae_loss(vae, x: torch.Tensor, beta_norm: float, sample: bool = True, labels: Optional[torch.Tensor] = None,
                 aux_weight: float = 0.0) -> Dict[str, torch.Tensor]:
    """Negative β-ELBO of one modality, per sample (paper Eq. 1 with β = β_norm·D_x/D_z, Sec. V-D), optionally plus
    an auxiliary class loss.

    The auxiliary term (not in the paper) is ``aux_weight · D_x/D_z · CE(W·mean, label)`` with a linear read-out
    ``W`` (``vae.aux``), normalised like β; samples with ``label < 0`` do not count. It keeps the evidence a sensor
    has about the class (e.g. the colour of a small object in a large image, the few-millimetre depth profile that
    tells a cylinder from a cube in a 667-beam scan) in the 10 latent dimensions, which the unsupervised β-ELBO
    alone spends on the background. ``aux_weight = 0`` is the paper's unsupervised β-VAE.

    Returns:
        dict with ``loss`` = ``rec + β·kl (+ aux)`` and the pieces ``rec``, ``kl``, ``aux`` (each (N,)).
    """
    mu, logvar = vae.encode_raw(x)
    z = reparameterize(mu, logvar) if sample else mu
    rec = reconstruction_nll(vae.likelihood, x, vae.decode_logits(z))
    kl = gaussian_kl(mu, logvar)
    beta = beta_from_norm(beta_norm, vae.input_dim, vae.latent_dim)
    loss = rec + beta * kl
    aux = torch.zeros_like(rec)
    if aux_weight > 0 and labels is not None and getattr(vae, "aux", None) is not None:
        known = labels >= 0
        ce = F.cross_entropy(vae.aux(mu), labels.clamp_min(0), reduction="none")
        aux = torch.where(known, ce, torch.zeros_like(ce))
        loss = loss + aux_weight * vae.input_dim / vae.latent_dim * aux
    return {"loss": loss, "rec": rec, "kl": kl, "aux": aux}


# ------------------------------------------------------------------------------------------------------ M2VAE

def subset_weights(modalities: Sequence[str]) -> Dict[Subset, float]:
    """Weight of each subset's term in the recursive M2VAE objective (paper Eq. 16-17, derivation Eq. 83).

    ``L_M2(S) = 1/|S| (L_VI(S) + Σ_{S' ⊂ S, |S'| = |S|−1} L_M2(S'))`` with ``L_M2({m}) = L_J({m})``. Unrolled, the
    term ``L_VI(S)`` (``L_J(S)`` for ``|S| = 1``) of ``L_M2(M)`` has weight ``c(S)/|S|``, where ``c(M) = 1`` and
    ``c(S') = Σ_{S ⊃ S', |S| = |S'|+1} c(S)/|S|`` (the coefficient with which ``L_M2(S')`` enters).

    M = 2: ``½ (L_a + L_b + L_VI(ab))`` (paper Eq. 9-15). M = 3: unimodal 1/3, pairs 1/6, triple 1/3
    (derivation Eq. 115-126).
    """
    mods = tuple(modalities)
    subsets = subsets_of(mods)
    coef: Dict[Subset, float] = {s: 0.0 for s in subsets}
    coef[mods] = 1.0
    for s in sorted(subsets, key=len, reverse=True):  # parents before children
        if len(s) == 1:
            continue
        for child in _children(s):
            coef[child] += coef[s] / len(s)
    return {s: coef[s] / len(s) for s in subsets}


def _children(s: Subset) -> List[Subset]:
    """Subsets of ``s`` with one modality less (order kept)."""
    return [tuple(m for m in s if m != drop) for drop in s]


def mutual_pairs(modalities: Sequence[str]) -> List[Tuple[Subset, Subset]]:
    """``(S, S')`` pairs of the mutual KL terms ``KL(q_S ‖ q_S')``, ``S' ⊂ S``, ``|S'| = |S| − 1`` (JMVAE, paper
    Eq. 4-5; derivation Eq. 108-114), each exactly once (the original Keras code counted pair→triple terms twice)."""
    return [(s, c) for s in subsets_of(modalities) if len(s) > 1 for c in _children(s)]


def m2vae_loss(model, xs: Mapping[str, torch.Tensor], present: Optional[torch.Tensor] = None, *,
               beta_norm: float = 0.01, alpha: float = 0.01, alpha_reenc: float = 1.0,
               sample: bool = True) -> Dict[str, torch.Tensor]:
    """Negative M2VAE objective with the re-encoding loss, averaged over the batch.

    ``E = Σ_S w_S [ rec_S + β_S KL(q_S ‖ p) + α Σ_{S'} KL(q_S ‖ q_S') + α_reenc KL(q_S(z|x_S) ‖ q_S(z|x'_S)) ]``

    - ``w_S``: :func:`subset_weights` (recursion, paper Eq. 16-17, derivation Eq. 83);
    - ``rec_S = Σ_{m∈S} −log p_m(x_m|z)``, ``z ~ q_S(z|x_S)`` (``L_J``, paper Eq. 1-2);
    - ``β_S = β_norm · D_S / D_z`` (paper Sec. III-A), unit Gaussian prior;
    - mutual terms ``KL(q_S ‖ q_S')`` with weight ``α`` (JMVAE / VI term, paper Eq. 4-5, Eq. 15), each pair once;
    - re-encoding loss (paper Eq. 19, Fig. 2b): ``x'_S`` are the decoded means of the sampled ``z``, re-encoded by
      the same subset encoder; weight ``alpha_reenc`` (0 = ablation, the paper's "without re-encoding loss").

    Args:
        model: :class:`~m2vae_fusion.training.networks.M2VAE`.
        xs: modality → (N, D_m) inputs (β-VAE latent means for the sensor model).
        present: bool (N, M) in ``model.modalities`` order, or None (all present). A subset's terms count only for
            samples holding every modality of the subset, so a sample with missing modalities trains exactly the
            subset encoders of the modalities it has.
        sample: draw ``z`` (training) or use the mean (deterministic evaluation).

    Returns:
        dict: ``loss`` (scalar), and per-subset scalars ``rec/<key>``, ``kl/<key>``, ``mutual/<key>``,
        ``reenc/<key>`` (batch means over the samples where the subset is present).
    """
    mods = model.modalities
    n = next(iter(xs.values())).shape[0]
    weights = subset_weights(mods)
    if present is None:
        present_f = torch.ones(n, len(mods))
    else:
        present_f = present.to(torch.float32)
    col = {m: i for i, m in enumerate(mods)}
    cache: Dict[str, torch.Tensor] = {}
    q: Dict[Subset, Tuple[torch.Tensor, torch.Tensor]] = {}
    masks: Dict[Subset, torch.Tensor] = {}
    for s in model.subsets:
        q[s] = model.encode(s, xs, cache)
        mk = torch.ones(n)
        for m in s:
            mk = mk * present_f[:, col[m]]
        masks[s] = mk
    total = torch.zeros(n)
    parts: Dict[str, torch.Tensor] = {}

    def _mean(v, mk):
        return (v * mk).sum() / mk.sum().clamp_min(1.0)

    for s in model.subsets:
        mu, lv = q[s]
        mk = masks[s]
        z = reparameterize(mu, lv) if sample else mu
        recon = {m: model.decoders[m](z) for m in s}
        outs = {m: torch.sigmoid(recon[m]) if model.output_activation == "sigmoid" else recon[m] for m in s}
        rec = sum(reconstruction_nll("gaussian", xs[m], outs[m]) for m in s)
        kl = gaussian_kl(mu, lv)
        beta = beta_from_norm(beta_norm, model.subset_dim(s), model.latent_dim)
        term = rec + beta * kl
        key = subset_key(s)
        if len(s) > 1:
            mutual = sum(gaussian_kl(mu, lv, *q[c]) for c in _children(s))
            term = term + alpha * mutual
            parts[f"mutual/{key}"] = _mean(mutual, mk).detach()
        if alpha_reenc > 0:
            mu2, lv2 = model.encode(s, outs)
            reenc = gaussian_kl(mu, lv, mu2, lv2)
            term = term + alpha_reenc * reenc
            parts[f"reenc/{key}"] = _mean(reenc, mk).detach()
        total = total + weights[s] * mk * term
        parts[f"rec/{key}"] = _mean(rec, mk).detach()
        parts[f"kl/{key}"] = _mean(kl, mk).detach()
    parts["loss"] = total.mean()
    return parts
