"""Shared base of the multimodal-VAE objectives (issue 11): the expert networks, the Gaussian combinations computed
inside every subset encoder, and the pieces every objective's loss uses.

Every objective module (``m2vae``, ``jmvae``, ``mvae``, ``mmvae``, ``mopoe``) defines

- ``NAME``: the manifest's ``objective``;
- ``build(modalities, input_dims, latent_dim, hidden, fusion_hidden, output_activation=None)`` → a torch module with
  the interface the exporter and the trainer use: ``modalities``, ``input_dims``, ``latent_dim``, ``subsets``,
  ``objective``, ``encode(subset, xs) -> (mean, log_variance)`` (the subset encoder ``q_S(z|x_S)`` a bundle holds),
  ``decode(m, z)``, ``decoders[m]`` (pre-activation), ``subset_dim(subset)``;
- ``loss(model, xs, present=None, *, beta_norm, alpha, alpha_reenc, sample=True, beta=None)`` → dict with the
  scalar ``loss`` (the negative objective, averaged over the batch) and per-subset scalars ``rec/<key>``,
  ``kl/<key>`` (and ``reenc/<key>`` when ``alpha_reenc > 0``). ``beta`` (not for m2vae): one fixed β for every KL
  term instead of ``β_norm · D_S / D_z`` (:func:`kl_weight`).

The networks are the M2VAE's (FUSION 2019 Sec. V-A, Fig. 2c): unimodal trunk ``f_m`` (``hidden`` ReLU MLP) + Gaussian
heads, mirror MLP decoders, same latent size. The joint-encoder objectives (m2vae, jmvae) add one fusion layer and
heads per multi-modal subset; the expert objectives (mvae, mmvae, mopoe) compute every multi-modal subset encoder
from the unimodal experts in closed form (:func:`poe`, :func:`mixture_moments`), so the ONNX export of ``encode``
contains the combination and the runtime needs nothing new.
"""
from __future__ import annotations

import abc
import itertools
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from m2vae_fusion.training.losses import gaussian_kl, reconstruction_nll, reparameterize
from m2vae_fusion.training.networks import GaussianHeads, MLPDecoder, MLPTrunk, Subset, subset_key, subsets_of

Gaussian = Tuple[torch.Tensor, torch.Tensor]

#: log-variance range of every expert before it is combined (keeps exp(−log_variance) finite in float32)
LOGVAR_CLAMP = (-20.0, 20.0)


def poe(experts: Sequence[Gaussian], prior_expert: bool) -> Gaussian:
    """Product of diagonal Gaussian experts in closed form (Wu & Goodman 2018, MVAE, Sec. 3.1 "product of Gaussian
    experts"; Sutter et al., ICLR 2021, Sec. 3 / App. "PoE of Gaussians"): precision ``T = Σ_k 1/σ_k²``, mean
    ``μ = (Σ_k μ_k/σ_k²) / T``, variance ``1/T``. ``prior_expert`` adds the unit Gaussian ``p(z) = N(0, I)``
    (precision 1, mean 0) as one more expert, as the MVAE does.

    Args:
        experts: non-empty list of (mean, log_variance), each (N, D).

    Returns:
        (mean, log_variance) (N, D).
    """
    precisions = [torch.exp(-lv.clamp(*LOGVAR_CLAMP)) for _, lv in experts]
    num = sum(mu * p for (mu, _), p in zip(experts, precisions))
    tot = sum(precisions)
    if prior_expert:
        tot = tot + 1.0
    return num / tot, -torch.log(tot)


def mixture_moments(components: Sequence[Gaussian]) -> Gaussian:
    """Moment-matched Gaussian of a uniform mixture of diagonal Gaussians (the mean and per-dimension variance of
    ``1/K Σ_k N(μ_k, σ_k²)``): ``μ = 1/K Σ μ_k``, ``σ² = 1/K Σ (σ_k² + μ_k²) − μ²``. The bundle carries this for a
    mixture posterior (MoE: Shi et al., NeurIPS 2019, Eq. 2; MoPoE: Sutter et al., ICLR 2021, Eq. 5), which is not
    Gaussian itself (issue 11)."""
    k = float(len(components))
    mu = sum(m for m, _ in components) / k
    second = sum(torch.exp(lv.clamp(*LOGVAR_CLAMP)) + m * m for m, lv in components) / k
    var = (second - mu * mu).clamp_min(1e-8)
    return mu, torch.log(var)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; μ, e^logvar)`` summed over the last axis (N,)."""
    return -0.5 * torch.sum(math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar), dim=-1)


def nonempty_subsets(subset: Sequence[str]) -> List[Subset]:
    """All non-empty subsets of ``subset`` (by size, then order)."""
    s = tuple(subset)
    return [c for k in range(1, len(s) + 1) for c in itertools.combinations(s, k)]


class ExpertsVAE(nn.Module, metaclass=abc.ABCMeta):
    """Unimodal experts ``q_m(z|x_m)`` (trunk ``f_m`` + Gaussian heads, FUSION 2019 Fig. 2c) and decoders
    ``p_m(x_m|z)``; a multi-modal subset encoder is a closed-form combination of the experts (:meth:`combine`,
    defined by the objective). Same layer sizes as :class:`~m2vae_fusion.training.networks.M2VAE` without the fusion
    layers.

    Args:
        modalities, input_dims, latent_dim, hidden, output_activation: as for the M2VAE.
    """

    objective = "experts"

    def __init__(self, modalities: Sequence[str], input_dims: Mapping[str, int], latent_dim: int = 10,
                 hidden: Sequence[int] = (128, 64), output_activation: Optional[str] = None):
        super().__init__()
        if len(modalities) < 2:
            raise ValueError("a multimodal VAE needs at least two modalities")
        self.modalities = tuple(modalities)
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.latent_dim = int(latent_dim)
        self.subsets = subsets_of(self.modalities)
        self.output_activation = output_activation
        self.trunks = nn.ModuleDict({m: MLPTrunk(self.input_dims[m], hidden) for m in self.modalities})
        self.heads = nn.ModuleDict({m: GaussianHeads(int(hidden[-1]), latent_dim) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: MLPDecoder(latent_dim, list(hidden)[::-1], (self.input_dims[m],))
                                       for m in self.modalities})

    def subset_dim(self, subset: Sequence[str]) -> int:
        """``D_S = Σ_{m∈S} D_m``."""
        return sum(self.input_dims[m] for m in subset)

    def expert(self, m: str, xs: Mapping[str, torch.Tensor],
               cache: Optional[Dict[str, Gaussian]] = None) -> Gaussian:
        """``q_m(z|x_m)``: (mean, log_variance) (N, D_z) of modality ``m``'s expert."""
        if cache is not None and m in cache:
            return cache[m]
        out = self.heads[m](self.trunks[m](xs[m]))
        if cache is not None:
            cache[m] = out
        return out

    @abc.abstractmethod
    def combine(self, subset: Subset, experts: Mapping[str, Gaussian]) -> Gaussian:
        """The objective's subset posterior ``q_S(z|x_S)`` from the experts of ``subset`` (each (mean,
        log_variance), (N, D_z)): a product of experts (MVAE), a mixture (MMVAE) or a mixture of products
        (MoPoE), each subclass its own. ExpertsVAE itself is abstract: instantiating it raises TypeError."""

    def encode(self, subset: Sequence[str], xs: Mapping[str, torch.Tensor],
               trunk_cache: Optional[Dict[str, Gaussian]] = None) -> Gaussian:
        """The subset encoder of ``subset`` (what the bundle's ``m2vae_encoder_<key>.onnx`` computes): the
        objective's combination of the experts of ``subset`` ((mean, log_variance), each (N, D_z))."""
        s = tuple(subset)
        return self.combine(s, {m: self.expert(m, xs, trunk_cache) for m in s})

    def decode(self, m: str, z: torch.Tensor) -> torch.Tensor:
        """Mean of ``p_m(x_m | z)``."""
        out = self.decoders[m](z)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out


# --------------------------------------------------------------------------------------------- loss pieces

def kl_weight(beta, beta_norm: float, input_dim: int, latent_dim: int) -> float:
    """Weight of a KL term: ``β = β_norm · D_S / D_z`` (FUSION 2019 Sec. III-A) unless a fixed ``beta`` is given
    (one β for every KL term, as MultiVae's models use; the cross-check of ``bench baselines`` sets it)."""
    if beta is not None:
        return float(beta)
    return float(beta_norm) * float(input_dim) / float(latent_dim)


def experts_setup(model: "ExpertsVAE", xs: Mapping[str, torch.Tensor], present, beta, beta_norm: float):
    """What the expert-based losses (MMVAE, MoPoE) start from: batch size N, the presence masks
    (:func:`present_masks`), every modality's expert (mean, log_variance) and the KL weight of the full set
    (:func:`kl_weight`). Returns ``(n, masks, experts, beta_s)``."""
    mods = model.modalities
    n = next(iter(xs.values())).shape[0]
    masks = present_masks(mods, n, present)
    cache: Dict = {}
    experts = {m: model.expert(m, xs, cache) for m in mods}
    return n, masks, experts, kl_weight(beta, beta_norm, model.subset_dim(mods), model.latent_dim)


def present_masks(modalities: Sequence[str], n: int, present: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """modality → float mask (N,) of the samples holding it (``present`` bool (N, M) or None: all)."""
    if present is None:
        return {m: torch.ones(n) for m in modalities}
    p = present.to(torch.float32)
    return {m: p[:, i] for i, m in enumerate(modalities)}


def subset_mask(subset: Sequence[str], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N,) 1 where the sample holds every modality of ``subset``."""
    out = None
    for m in subset:
        out = masks[m] if out is None else out * masks[m]
    return out


def masked_mean(v: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
    return (v * mk).sum() / mk.sum().clamp_min(1.0)


def decode_outputs(model, z: torch.Tensor, modalities: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Decoded means of ``modalities`` from ``z``."""
    return {m: model.decode(m, z) for m in modalities}


def rec_nll(xs: Mapping[str, torch.Tensor], outs: Mapping[str, torch.Tensor], masks: Optional[Mapping] = None):
    """``Σ_m −log p_m(x_m|z)`` (Gaussian feature likelihood, as the M2VAE's; design.md §2) over the modalities of
    ``outs``; with ``masks`` only the modalities each sample holds count."""
    tot = None
    for m, o in outs.items():
        v = reconstruction_nll("gaussian", xs[m], o)
        if masks is not None:
            v = v * masks[m]
        tot = v if tot is None else tot + v
    return tot


def reencoding(model, subset: Subset, q: Gaussian, outs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Re-encoding divergence ``KL(q_S(z|x_S) ‖ q_S(z|x'_S))`` of FUSION 2019 Eq. 19 (Fig. 2b), ``x'_S`` the decoded
    means: the same term the M2VAE adds, applied to whatever subset encoder the objective has (N,)."""
    q2 = model.encode(subset, {m: outs[m] for m in subset})
    return gaussian_kl(q[0], q[1], q2[0], q2[1])


def sample_z(q: Gaussian, sample: bool) -> torch.Tensor:
    return reparameterize(*q) if sample else q[0]


def reencoding_terms(model, xs, masks, q: Mapping[Subset, Gaussian], alpha_reenc: float, sample: bool,
                     parts: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``α_reenc · 1/|P| Σ_S reenc_S`` over all subsets ``S`` (P: the ``2^M − 1`` subsets; each masked to the samples
    holding ``S``), (N,). Zero when ``alpha_reenc`` is 0."""
    n = next(iter(xs.values())).shape[0]
    total = torch.zeros(n)
    if alpha_reenc <= 0:
        return total
    for s in model.subsets:
        mk = subset_mask(s, masks)
        outs = decode_outputs(model, sample_z(q[s], sample), s)
        r = reencoding(model, s, q[s], outs)
        parts[f"reenc/{subset_key(s)}"] = masked_mean(r, mk).detach()
        total = total + mk * r
    return alpha_reenc * total / len(model.subsets)
