"""``mopoe``: the MoPoE-VAE (Sutter, Daunhawer & Vogt, *Generalized Multimodal ELBO*, ICLR 2021).

- Posterior of a set ``X``: uniform mixture over all non-empty subsets ``X_k ⊆ X`` of the product of their experts,
  ``q(z|X) = 1/|P(X)| Σ_k q̃(z|X_k)``, ``q̃(z|X_k) = PoE({q(z|x_m)}_{m∈X_k})`` (Eq. 5 / Definition 2; Gaussian
  PoE in closed form, Sec. 3). As in the authors' implementation (and MultiVae's), the prior expert ``N(0, I)``
  joins the product of the subset holding every modality only; a one-modality subset is its expert.
- Objective (Eq. 6-7): ``E_{q(z|X)}[log p(X|z)] − β KL(q(z|X) ‖ p)``, estimated as the authors' implementation
  does (and MultiVae's): one reparameterised sample per data point from **one** mixture component, the components
  assigned to the batch's samples in equal contiguous blocks (:func:`component_of`; with missing modalities a
  uniformly random component among the subsets the sample holds), and the mixture's KL replaced by the mean of the
  components' closed-form KLs, its upper bound by convexity:
  ``L = E_{k, z ~ q̃_k}[Σ_m log p(x_m|z)] − β · 1/K Σ_k KL(q̃_k ‖ p)``. β = β_norm · D_M / D_z (FUSION 2019
  Sec. III-A). (A stratified estimate, one sample from every component per point, trained the joint encoder
  noticeably better on MoG, but was 15 points off MultiVae's ab accuracy at β = 1; we follow the paper's code.)
- Bundle: the subset encoder of ``S`` is the moment-matched Gaussian (mean, log-variance) of the MoPoE over the
  subsets of ``S`` (:func:`~m2vae_fusion.training.objectives.base.mixture_moments`), computed inside the ONNX graph.
- With missing modalities (``present``) the mixture runs over the subsets of what a sample holds and the
  reconstruction over the modalities it holds. Optional re-encoding loss (FUSION 2019 Eq. 19) with ``alpha_reenc``;
  ``alpha`` unused.
"""
from __future__ import annotations

from typing import Dict

import torch

from m2vae_fusion.training.losses import gaussian_kl
from m2vae_fusion.training.networks import subset_key
from m2vae_fusion.training.objectives import base

NAME = "mopoe"


class MoPoEVAE(base.ExpertsVAE):
    """Unimodal experts; subset encoder = moment-matched mixture over the subsets' products of experts."""

    objective = NAME

    def combine(self, subset, experts):
        full = len(self.modalities)
        comps = [base.poe([experts[m] for m in k], prior_expert=len(k) == full)
                 for k in base.nonempty_subsets(subset)]
        return comps[0] if len(comps) == 1 else base.mixture_moments(comps)


def build(modalities, input_dims, latent_dim, hidden=(128, 64), fusion_hidden=64, output_activation=None):
    """The MoPoE network (``fusion_hidden`` unused: no joint encoder)."""
    return MoPoEVAE(modalities, input_dims, latent_dim, hidden, output_activation)


def component_of(available: torch.Tensor, complete: bool) -> torch.Tensor:
    """The mixture component (subset index) each sample draws its latent from, (N,) int64.

    ``available`` float (N, K): 1 where the sample holds the subset. ``complete`` (every sample holds every
    modality): equal contiguous blocks over the batch, ``floor(N/K)`` samples per component and the rest to the last
    one (the MoPoE authors' deterministic selection); else uniformly random among each sample's available subsets
    (torch's RNG)."""
    n, k = available.shape
    if complete:
        per = n // k
        if per == 0:
            return torch.full((n,), k - 1, dtype=torch.long)
        return (torch.arange(n) // per).clamp_max(k - 1)
    return torch.multinomial(available.clamp_min(0) + 1e-12 * (available.sum(1, keepdim=True) == 0), 1)[:, 0]


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.0, alpha_reenc=0.0, sample=True,
         beta=None) -> Dict:
    """Negative MoPoE ELBO (one mixture component per sample, as the authors' code), batch mean (module docstring)."""
    mods = model.modalities
    n, masks, experts, beta_s = base.experts_setup(model, xs, present, beta, beta_norm)
    avail = torch.stack([base.subset_mask(s, masks) for s in model.subsets], dim=1)          # (N, K)
    held = avail.sum(1)
    weights = avail / held.clamp_min(1.0)[:, None]
    comps = [base.poe([experts[m] for m in s], prior_expert=len(s) == len(mods)) for s in model.subsets]
    pick = component_of(avail, present is None or bool(avail.all()))
    rows = torch.arange(n)
    mu = torch.stack([c[0] for c in comps], dim=1)[rows, pick]
    lv = torch.stack([c[1] for c in comps], dim=1)[rows, pick]
    rec = base.rec_nll(xs, base.decode_outputs(model, base.sample_z((mu, lv), sample), mods), masks)
    kls = torch.stack([gaussian_kl(*c) for c in comps], dim=1)                                # (N, K)
    kl = torch.where(weights > 0, weights * kls, torch.zeros_like(kls)).sum(1)
    some = (held > 0).float()
    total = some * (rec + beta_s * kl)
    parts: Dict[str, torch.Tensor] = {}
    for j, s in enumerate(model.subsets):
        sel = (pick == j).float() * some
        parts[f"rec/{subset_key(s)}"] = base.masked_mean(rec, sel).detach()
        parts[f"kl/{subset_key(s)}"] = base.masked_mean(kls[:, j], avail[:, j]).detach()
    q_all = {s: model.combine(s, experts) for s in model.subsets}
    total = total + base.reencoding_terms(model, xs, masks, q_all, alpha_reenc, sample, parts)
    parts["loss"] = total.mean()
    return parts
