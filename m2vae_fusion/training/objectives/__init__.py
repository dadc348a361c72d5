"""Multimodal-VAE objectives, one module each over :mod:`.base` (issue 11), selected by the training config's
``objective``:

=========  ==============================================================  ======================================
name       paper                                                           subset encoder in the bundle
=========  ==============================================================  ======================================
``m2vae``  Korthals et al., FUSION 2019, Eq. 16-19 (default)               own network per subset (fusion layer)
``jmvae``  JMVAE-KL: Suzuki et al. 2017 as in the M2VAE ICLR draft Eq. 3   own network per subset (fusion layer)
``mvae``   Wu & Goodman, NeurIPS 2018 (PoE + prior expert, sub-sampling)   product of the unimodal experts
``mmvae``  Shi et al., NeurIPS 2019 (MoE, stratified ELBO)                 moment-matched mixture of the experts
``mopoe``  Sutter et al., ICLR 2021 (mixture over all subsets of PoE)      moment-matched mixture of the PoEs
=========  ==============================================================  ======================================
"""
from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("m2vae", "jmvae", "mvae", "mmvae", "mopoe")


def get(name: str) -> ModuleType:
    """The objective module ``name`` (``NAME``, ``build``, ``loss``; see :mod:`.base`).

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in NAMES:
        raise KeyError(f"unknown objective {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
