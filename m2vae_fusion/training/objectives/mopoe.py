"""``mopoe``: the MoPoE-VAE (Sutter, Daunhawer & Vogt, *Generalized Multimodal ELBO*, ICLR 2021).

- Posterior of a set ``X``: uniform mixture over all non-empty subsets ``X_k ⊆ X`` of the product of their experts,
  ``q(z|X) = 1/|P(X)| Σ_k q̃(z|X_k)``, ``q̃(z|X_k) = PoE({q(z|x_m)}_{m∈X_k})`` (Eq. 5 / Definition 2; Gaussian
  PoE in closed form, Sec. 3). As in the authors' implementation (and MultiVae's), the prior expert ``N(0, I)``
  joins the product of the subset holding every modality only; a one-modality subset is its expert.
- Objective (Eq. 6-7): ``E_{q(z|X)}[log p(X|z)] − β KL(q(z|X) ‖ p)``, estimated with one reparameterised sample
  from every mixture component (stratified) and the mixture's KL replaced by the mean of the components' closed-form
  KLs, its upper bound by convexity (the bound the paper's implementation optimises):
  ``L = 1/K Σ_k ( E_{q̃_k}[Σ_m log p(x_m|z)] − β KL(q̃_k ‖ p) )``. β = β_norm · D_M / D_z (FUSION 2019 Sec. III-A).
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


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.0, alpha_reenc=0.0, sample=True,
         beta=None) -> Dict:
    """Negative MoPoE ELBO (stratified over the mixture components), batch mean (see the module docstring)."""
    mods = model.modalities
    n = next(iter(xs.values())).shape[0]
    masks = base.present_masks(mods, n, present)
    cache: Dict = {}
    experts = {m: model.expert(m, xs, cache) for m in mods}
    beta_s = base.kl_weight(beta, beta_norm, model.subset_dim(mods), model.latent_dim)
    mk_s = {s: base.subset_mask(s, masks) for s in model.subsets}
    count = sum(mk_s.values()).clamp_min(1.0)
    parts: Dict[str, torch.Tensor] = {}
    total = torch.zeros(n)
    for s in model.subsets:
        q = base.poe([experts[m] for m in s], prior_expert=len(s) == len(mods))
        rec = base.rec_nll(xs, base.decode_outputs(model, base.sample_z(q, sample), mods), masks)
        kl = gaussian_kl(*q)
        total = total + mk_s[s] * (rec + beta_s * kl) / count
        parts[f"rec/{subset_key(s)}"] = base.masked_mean(rec, mk_s[s]).detach()
        parts[f"kl/{subset_key(s)}"] = base.masked_mean(kl, mk_s[s]).detach()
    q_all = {s: model.combine(s, experts) for s in model.subsets}
    total = total + base.reencoding_terms(model, xs, masks, q_all, alpha_reenc, sample, parts)
    parts["loss"] = total.mean()
    return parts
