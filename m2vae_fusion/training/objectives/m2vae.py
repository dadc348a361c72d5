"""``m2vae``: the M2VAE objective (Korthals et al., FUSION 2019, Eq. 16-17 with the re-encoding loss Eq. 19;
derivation arXiv 1903.07303 Eq. 83), unchanged: :func:`m2vae_fusion.training.losses.m2vae_loss` on the
:class:`~m2vae_fusion.training.networks.M2VAE` network (one encoder per subset, Fig. 2c)."""
from __future__ import annotations

from m2vae_fusion.training.losses import m2vae_loss
from m2vae_fusion.training.networks import M2VAE

NAME = "m2vae"


def build(modalities, input_dims, latent_dim, hidden=(128, 64), fusion_hidden=64, output_activation=None) -> M2VAE:
    """The M2VAE network (2^M − 1 subset encoders, M decoders)."""
    model = M2VAE(modalities, input_dims, latent_dim, hidden, fusion_hidden, output_activation)
    model.objective = NAME
    return model


def loss(model, xs, present=None, *, beta_norm=0.01, alpha=0.01, alpha_reenc=0.0, sample=True, beta=None):
    """Negative M2VAE objective (see :func:`m2vae_fusion.training.losses.m2vae_loss`); β is always
    ``β_norm · D_S / D_z`` (paper Sec. III-A), so a fixed ``beta`` is refused (ValueError)."""
    if beta is not None:
        raise ValueError("the m2vae objective weighs KL terms by beta_norm (β_S = β_norm·D_S/D_z), not a fixed beta")
    return m2vae_loss(model, xs, present, beta_norm=beta_norm, alpha=alpha, alpha_reenc=alpha_reenc, sample=sample)
