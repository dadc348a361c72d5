"""``mmvae``: the MMVAE (Shi, Siddharth, Paige & Torr, *Variational Mixture-of-Experts Autoencoders for Multi-Modal
Deep Generative Models*, NeurIPS 2019).

- Joint posterior: uniform mixture of the unimodal experts, ``q(z|x_{1:M}) = 1/M Σ_m q_m(z|x_m)`` (Eq. 2).
- Objective: the stratified ELBO estimator (Sec. 3, Eq. 3 with one sample per expert, the "stratified sampling"
  the paper uses instead of sampling the mixture's component):
  ``L = 1/M Σ_m E_{z_m ~ q_m}[ log p(x_{1:M}|z_m) − β (log q(z_m|x_{1:M}) − log p(z_m)) ]``,
  one reparameterised sample per expert; the mixture density is exact (log-sum-exp over the experts). The paper's
  IWAE / DReG variants (Eq. 4) are not implemented. β = β_norm · D_M / D_z (FUSION 2019 Sec. III-A).
- Bundle: the subset encoder of ``S`` is the moment-matched Gaussian (mean, log-variance) of the mixture of the
  experts of ``S`` (:func:`~m2vae_fusion.training.objectives.base.mixture_moments`); the mixture itself is not
  Gaussian (issue 11).
- With missing modalities (``present``) the mixture and the reconstruction run over the modalities a sample holds.
  Optional re-encoding loss (FUSION 2019 Eq. 19) on every subset encoder with ``alpha_reenc``; ``alpha`` unused.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from m2vae_fusion.training.networks import subset_key
from m2vae_fusion.training.objectives import base

NAME = "mmvae"


class MMVAE(base.ExpertsVAE):
    """Unimodal experts; subset encoder = moment-matched uniform mixture of the experts (Shi et al. 2019, Eq. 2)."""

    objective = NAME

    def combine(self, subset, experts):
        if len(subset) == 1:
            return experts[subset[0]]
        return base.mixture_moments([experts[m] for m in subset])


def build(modalities, input_dims, latent_dim, hidden=(128, 64), fusion_hidden=64, output_activation=None) -> MMVAE:
    """The MMVAE network (``fusion_hidden`` unused: no joint encoder)."""
    return MMVAE(modalities, input_dims, latent_dim, hidden, output_activation)


def mixture_log_density(z: torch.Tensor, experts, masks, mods) -> torch.Tensor:
    """``log 1/K Σ_{m present} q_m(z|x_m)`` (N,), K the number of experts each sample holds."""
    logs = torch.stack([base.gaussian_log_density(z, *experts[m]) for m in mods], dim=1)       # (N, M)
    pm = torch.stack([masks[m] for m in mods], dim=1)
    logs = logs.masked_fill(pm <= 0, float("-inf"))
    return torch.logsumexp(logs, dim=1) - torch.log(pm.sum(1).clamp_min(1.0))


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.0, alpha_reenc=0.0, sample=True,
         beta=None) -> Dict:
    """Negative stratified MMVAE ELBO, batch mean (see the module docstring)."""
    mods = model.modalities
    n, masks, experts, beta_s = base.experts_setup(model, xs, present, beta, beta_norm)
    count = sum(masks[m] for m in mods).clamp_min(1.0)
    parts: Dict[str, torch.Tensor] = {}
    total = torch.zeros(n)
    for m in mods:
        mk = masks[m]
        z = base.sample_z(experts[m], sample)
        rec = base.rec_nll(xs, base.decode_outputs(model, z, mods), masks)
        log_q = mixture_log_density(z, experts, masks, mods)
        log_p = -0.5 * torch.sum(math.log(2 * math.pi) + z * z, dim=-1)
        kl = log_q - log_p                                                # one-sample estimate of the KL term
        total = total + mk * (rec + beta_s * kl) / count
        parts[f"rec/{m}"] = base.masked_mean(rec, mk).detach()
        parts[f"kl/{m}"] = base.masked_mean(kl, mk).detach()
    q_all = {s: model.combine(s, experts) for s in model.subsets}
    total = total + base.reencoding_terms(model, xs, masks, q_all, alpha_reenc, sample, parts)
    parts["loss"] = total.mean()
    return parts
