"""``jmvae``: JMVAE-KL (Suzuki, Nakayama & Matsuo 2017, as written in the M2VAE ICLR 2019 draft, Sec. 2.1.2 Eq. 3):

``L = L_J(M) − α Σ_{S ⊊ M} KL(q_M(z|x_M) ‖ q_S(z|x_S))``, ``L_J(M) = E_{q_M}[log p(x_M|z)] − β_M KL(q_M ‖ p)``.

Only the joint encoder meets the reconstruction and the prior; every other subset encoder is fitted to the joint
posterior by the KL term ("unimodal PDF fitting", draft Eq. 3). For two modalities this is exactly the draft's Eq. 3
(``S ∈ {a, b}``). For ``M ≥ 3`` the draft's VI derivation (appendix Eq. 15-18) only reaches the ``|S| = M − 1``
subsets; the bundle needs an encoder for every subset, so the KL term runs over every proper subset ``S ⊊ M`` (the
usual JMVAE extension to missing modalities). β_M = β_norm · D_M / D_z (FUSION 2019 Sec. III-A), α as in the draft
(config ``m2vae.alpha``). Optional re-encoding loss (FUSION 2019 Eq. 19) on every subset encoder with
``alpha_reenc``. Samples missing a modality train nothing (the JMVAE needs the joint observation).

Network: the M2VAE's (one encoder per subset with a fusion layer, FUSION 2019 Fig. 2c), so the comparison with the
M2VAE isolates the objective.
"""
from __future__ import annotations

from typing import Dict

import torch

from m2vae_fusion.training.losses import gaussian_kl
from m2vae_fusion.training.networks import M2VAE, subset_key
from m2vae_fusion.training.objectives import base

NAME = "jmvae"


def build(modalities, input_dims, latent_dim, hidden=(128, 64), fusion_hidden=64, output_activation=None) -> M2VAE:
    """The M2VAE network (joint and all subset encoders), trained with the JMVAE-KL objective."""
    model = M2VAE(modalities, input_dims, latent_dim, hidden, fusion_hidden, output_activation)
    model.objective = NAME
    return model


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.01, alpha_reenc=0.0, sample=True,
         beta=None) -> Dict:
    """Negative JMVAE-KL objective, batch mean (see the module docstring)."""
    mods = model.modalities
    n = next(iter(xs.values())).shape[0]
    masks = base.present_masks(mods, n, present)
    cache: Dict[str, torch.Tensor] = {}
    q = {s: model.encode(s, xs, cache) for s in model.subsets}
    full = tuple(mods)
    mk = base.subset_mask(full, masks)
    parts: Dict[str, torch.Tensor] = {}
    outs = base.decode_outputs(model, base.sample_z(q[full], sample), full)
    rec = base.rec_nll(xs, outs)
    kl = gaussian_kl(*q[full])
    beta_s = base.kl_weight(beta, beta_norm, model.subset_dim(full), model.latent_dim)
    mutual = torch.zeros(n)
    for s in model.subsets:
        if s == full:
            continue
        d = gaussian_kl(q[full][0], q[full][1], *q[s])
        parts[f"mutual/{subset_key(s)}"] = base.masked_mean(d, mk).detach()
        mutual = mutual + d
    total = mk * (rec + beta_s * kl + alpha * mutual)
    total = total + mk * base.reencoding_terms(model, xs, masks, q, alpha_reenc, sample, parts)
    key = subset_key(full)
    parts[f"rec/{key}"] = base.masked_mean(rec, mk).detach()
    parts[f"kl/{key}"] = base.masked_mean(kl, mk).detach()
    parts["loss"] = total.mean()
    return parts
