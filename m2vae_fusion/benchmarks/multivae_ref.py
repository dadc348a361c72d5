"""MultiVae 1.0.3 (Senellart et al., PyPI ``multivae``) as the reference implementation of JMVAE, MVAE, MMVAE and
MoPoE for ``m2vae-fusion bench baselines`` (issue 11). A benchmark dependency only (``requirements-bench.txt``).

Same networks as ours (:mod:`m2vae_fusion.training.networks`: trunk ``f_m`` + Gaussian heads per modality, mirror MLP
decoders; the JMVAE's joint encoder shares the unimodal trunks and adds the 64/ReLU fusion layer, like the M2VAE's
subset encoder), the same Gaussian likelihood (``σ² = 1/2``: MultiVae's ``normal`` decoder with ``scale = √½``),
no warm-up, and the settings that match the papers' objectives as ours implements them: MVAE with sub-sampling
(``k = 0`` extra subsets: none exist for two modalities), MMVAE with Gaussian posteriors, a fixed unit prior,
``K = 1`` and the ``iwae_looser`` loss (with K = 1 the stratified ELBO), MoPoE over all subsets. MultiVae's models
weigh every KL term with one ``beta`` (its MMVAE with none, i.e. 1), so the cross-check trains ours with the same
fixed β (``loss(..., beta=β)``). Training: MultiVae's own ``forward(...).loss`` under our loop (same batches, Adam,
learning rate, epochs); MultiVae's trainer only adds logging and checkpoints.

torchvision: MultiVae imports it at import time for its image data sets, which this benchmark never uses, and the
only torchvision wheel for torch 2.13 here is a CUDA build that cannot load beside the CPU torch (``operator
torchvision::nms does not exist``). When ``import torchvision`` fails, :func:`import_multivae` puts a placeholder
package in its place whose every attribute is a class whose instances raise when called or used, so any real use
fails loudly.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import sys
import types
from typing import Dict, Mapping

import numpy as np

#: MultiVae's Gaussian decoder scale matching our feature likelihood p(x|z) = N(x', σ² = 1/2)
SCALE = math.sqrt(0.5)


_MSG = ("torchvision is not usable here (CUDA wheel beside the CPU torch); MultiVae's image data sets and metrics "
        "are unavailable")


class _Unavailable:
    """Placeholder for a torchvision object: may be created (MultiVae builds ``ToTensor()`` as a default argument at
    import time), raises when called or used."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(_MSG)

    def __getattr__(self, name):
        raise RuntimeError(_MSG)


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = sys.modules.get(f"{self.__name__}.{name}")
        if sub is not None:
            return sub
        cls = type(name, (_Unavailable,), {})
        setattr(self, name, cls)
        return cls


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _PlaceholderModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        return None


def import_multivae():
    """``import multivae.models`` (with the torchvision placeholder when torchvision does not load); returns the
    module. Raises ImportError when MultiVae is not installed."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.meta_path.insert(0, _PlaceholderFinder())
    import multivae.models as mvm
    return mvm


def _classes():
    """(encoder, joint encoder, decoder) classes over our network pieces, subclassing MultiVae's bases."""
    import torch
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    from multivae.models.nn.base_architectures import BaseJointEncoder

    class Encoder(BaseEncoder):
        def __init__(self, trunk, heads, latent_dim):
            BaseEncoder.__init__(self)
            self.trunk, self.heads, self.latent_dim = trunk, heads, latent_dim

        def forward(self, x):
            mu, lv = self.heads(self.trunk(x))
            return ModelOutput(embedding=mu, log_covariance=lv)

    class JointEncoder(BaseJointEncoder):
        def __init__(self, trunks, fusion, heads, latent_dim, order):
            BaseJointEncoder.__init__(self)
            self.trunks, self.fusion, self.heads = trunks, fusion, heads
            self.latent_dim, self.order = latent_dim, tuple(order)

        def forward(self, x: dict):
            h = torch.cat([self.trunks[m](x[m]) for m in self.order], dim=1)
            mu, lv = self.heads(self.fusion(h))
            return ModelOutput(embedding=mu, log_covariance=lv)

    class Decoder(BaseDecoder):
        def __init__(self, net):
            BaseDecoder.__init__(self)
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    return Encoder, JointEncoder, Decoder


def build(name: str, cfg: Mapping, beta: float):
    """MultiVae's ``name`` model (jmvae, mvae, mmvae, mopoe) over our MoG networks (modalities a, b; D = 2)."""
    from torch import nn

    from m2vae_fusion.training.networks import GaussianHeads, MLPDecoder, MLPTrunk

    mvm = import_multivae()
    Encoder, JointEncoder, Decoder = _classes()
    mods, dz, hidden = ("a", "b"), int(cfg["latent_dim"]), list(cfg["hidden"])
    # created in the M2VAE's order (trunks, heads a, b, fusion layer, joint heads, decoders), so one seed gives
    # the same initial weights as ours
    trunks = nn.ModuleDict({m: MLPTrunk(2, hidden) for m in mods})
    encoders = {m: Encoder(trunks[m], GaussianHeads(hidden[-1], dz), dz) for m in mods}
    if name == "jmvae":
        fusion = nn.Sequential(nn.Linear(hidden[-1] * 2, int(cfg["fusion_hidden"])), nn.ReLU())
        joint = JointEncoder(trunks, fusion, GaussianHeads(int(cfg["fusion_hidden"]), dz), dz, mods)
    decoders = {m: Decoder(MLPDecoder(dz, hidden[::-1], (2,))) for m in mods}
    common = dict(n_modalities=2, latent_dim=dz, input_dims={m: (2,) for m in mods},
                  decoders_dist={m: "normal" for m in mods}, decoder_dist_params={m: {"scale": SCALE} for m in mods})
    if name == "jmvae":
        conf = mvm.JMVAEConfig(**common, alpha=float(cfg["alpha"]), warmup=0, beta=beta)
        return mvm.JMVAE(conf, encoders=encoders, decoders=decoders, joint_encoder=joint)
    if name == "mvae":
        conf = mvm.MVAEConfig(**common, use_subsampling=True, k=0, warmup=0, beta=beta)
        return mvm.MVAE(conf, encoders=encoders, decoders=decoders)
    if name == "mmvae":
        conf = mvm.MMVAEConfig(**common, K=1, prior_and_posterior_dist="normal", learn_prior=False,
                               loss="iwae_looser")
        return mvm.MMVAE(conf, encoders=encoders, decoders=decoders)
    if name == "mopoe":
        conf = mvm.MoPoEConfig(**common, beta=beta)
        return mvm.MoPoE(conf, encoders=encoders, decoders=decoders)
    raise KeyError(f"MultiVae has no reference for objective {name!r}")


def train(name: str, train_data: Mapping[str, np.ndarray], cfg: Mapping, seed: int, beta: float = 1.0):
    """Train MultiVae's ``name`` with its own loss (``model(batch).loss``) on our batches and optimiser."""
    import torch

    from m2vae_fusion.benchmarks.baselines import batch_order

    import_multivae()
    from multivae.data.datasets.base import MultimodalBaseDataset

    torch.manual_seed(seed)
    np.random.seed(seed)  # MultiVae's MVAE draws its random subsets with numpy
    model = build(name, cfg, beta)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    xa, xb = torch.from_numpy(train_data["a"]), torch.from_numpy(train_data["b"])
    model.train()
    for idx in batch_order(xa.shape[0], cfg, seed):
        t = torch.from_numpy(idx)
        batch = MultimodalBaseDataset(data={"a": xa[t], "b": xb[t]}, labels=None)
        loss = model(batch, epoch=1).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


def embeddings(model, name: str, data: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Latent means of ab, a and b read out as ours are (the bundle's subset encoders): the experts from MultiVae's
    encoders, ab from its joint encoder (jmvae) or combined exactly as our objective combines (PoE with the prior
    expert, moment-matched MoE / MoPoE; :mod:`m2vae_fusion.training.objectives`)."""
    import torch

    from m2vae_fusion.training import objectives

    with torch.no_grad():
        xs = {m: torch.from_numpy(data[m]) for m in ("a", "b")}
        ex = {}
        for m in ("a", "b"):
            o = model.encoders[m](xs[m])
            ex[m] = (o.embedding, o.log_covariance)
        if name == "jmvae":
            o = model.joint_encoder(xs)
            return {"ab": o.embedding.numpy(), "a": ex["a"][0].numpy(), "b": ex["b"][0].numpy()}
        ours = objectives.get(name).build(["a", "b"], {"a": 2, "b": 2}, 2, [4], 4)
        return {k: ours.combine(tuple(k), ex)[0].numpy() for k in ("ab", "a", "b")}
