"""``mvae``: the MVAE (Wu & Goodman, *Multimodal Generative Models for Scalable Weakly-Supervised Learning*,
NeurIPS 2018).

- Posterior of a subset: product of the unimodal Gaussian experts **and the prior expert** ``p(z) = N(0, I)``
  (Sec. 3.1, Eq. 3-4: ``q(z|x_S) ∝ p(z) Π_{m∈S} q̃(z|x_m)``; Gaussian product in closed form,
  :func:`~m2vae_fusion.training.objectives.base.poe`).
- Sub-sampled training (Sec. 3.2): per batch, the ELBO of the full set, the ELBO of every single modality, and the
  ELBOs of ``k`` random subsets of size ``2 … M − 1`` (``k = 1`` here; none for two modalities):
  ``L = ELBO(x_M) + Σ_m ELBO(x_m) + Σ_{j ≤ k} ELBO(x_{S_j})``, with
  ``ELBO(x_S) = E_{q_S}[Σ_{m∈S} log p(x_m|z)] − β_S KL(q_S ‖ p)`` and β_S = β_norm · D_S / D_z (FUSION 2019
  Sec. III-A, so β means the same for every objective). The terms are summed, as in the paper, not averaged.
- Optional re-encoding loss (FUSION 2019 Eq. 19) on every subset's PoE with ``alpha_reenc``; ``alpha`` is unused.

A term counts only for the samples holding its subset (``present``).
"""
from __future__ import annotations

from typing import Dict

import torch

from m2vae_fusion.training.losses import gaussian_kl
from m2vae_fusion.training.networks import subset_key
from m2vae_fusion.training.objectives import base

NAME = "mvae"


class MVAE(base.ExpertsVAE):
    """Unimodal experts; subset encoder = product of experts with the prior expert (Wu & Goodman 2018, Eq. 3-4)."""

    objective = NAME

    def combine(self, subset, experts):
        return base.poe([experts[m] for m in subset], prior_expert=True)


def build(modalities, input_dims, latent_dim, hidden=(128, 64), fusion_hidden=64, output_activation=None) -> MVAE:
    """The MVAE network (``fusion_hidden`` unused: no joint encoder)."""
    return MVAE(modalities, input_dims, latent_dim, hidden, output_activation)


def elbo_subsets(modalities, generator=None):
    """The subsets whose ELBOs one batch trains (Sec. 3.2): the full set, each modality, one random subset of size
    ``2 … M − 1`` (drawn with torch's RNG, so ``torch.manual_seed`` fixes it)."""
    mods = tuple(modalities)
    out = [mods] + [(m,) for m in mods]
    middle = [s for s in base.nonempty_subsets(mods) if 1 < len(s) < len(mods)]
    if middle:
        out.append(middle[int(torch.randint(len(middle), (1,), generator=generator))])
    return out


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.0, alpha_reenc=0.0, sample=True,
         beta=None) -> Dict:
    """Negative sub-sampled MVAE objective, batch mean (see the module docstring)."""
    n = next(iter(xs.values())).shape[0]
    masks = base.present_masks(model.modalities, n, present)
    cache: Dict = {}
    parts: Dict[str, torch.Tensor] = {}
    total = torch.zeros(n)
    q_all = {}
    for s in model.subsets:
        q_all[s] = model.encode(s, xs, cache)
    for s in elbo_subsets(model.modalities):
        mk = base.subset_mask(s, masks)
        q = q_all[s]
        rec = base.rec_nll(xs, base.decode_outputs(model, base.sample_z(q, sample), s))
        kl = gaussian_kl(*q)
        beta_s = base.kl_weight(beta, beta_norm, model.subset_dim(s), model.latent_dim)
        total = total + mk * (rec + beta_s * kl)
        parts[f"rec/{subset_key(s)}"] = base.masked_mean(rec, mk).detach()
        parts[f"kl/{subset_key(s)}"] = base.masked_mean(kl, mk).detach()
    total = total + base.reencoding_terms(model, xs, masks, q_all, alpha_reenc, sample, parts)
    parts["loss"] = total.mean()
    return parts
