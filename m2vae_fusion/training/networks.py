"""Networks (torch): one β-VAE per modality, the M2VAE over any number of modalities, the class-belief head.

References (papers in ``../shared/papers``):

- Korthals et al., *Jointly Trained Variational Autoencoder for Multi-Modal Sensor Fusion*, FUSION 2019 ("paper"):
  Eq. 1 (VAE ELBO), Fig. 2c (multi-modal encoders fed with the unimodal encoders' penultimate features),
  Sec. V-A (MLP sizes 128/64, fusion layer 64), Sec. V-D (β-VAE per modality as preprocessing, ``D_* = 10``).
- Korthals, *M2VAE - Derivation ...* (arXiv 1903.07303, "derivation"): ``2^|M| - 1`` encoders, ``|M|`` decoders.

Every network returns what the ONNX bundle exposes (docs/formats.md); the ``export`` wrappers in
:mod:`m2vae_fusion.training.export` only rename inputs/outputs.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from m2vae_fusion.core.modalities import MODALITIES, subset_key  # noqa: F401  (subset_key re-exported)
from m2vae_fusion.core.preprocess import crop_config, input_shape

Subset = Tuple[str, ...]

#: Default layer sizes; ``config/train.yaml`` can override them.
DEFAULT_ARCH = {
    "camera_channels": [32, 32, 64, 64],
    "lidar_channels": [16, 32, 32],
    "trunk_hidden": 256,          # penultimate width of the β-VAE encoders (camera, lidar)
    "reflectance_hidden": [64, 64],
    "lidar_encoder": "object",    # "object": object-centred depth profile (LidarObjectTrunk); "scan": whole scan
}

#: Likelihood of each modality's β-VAE decoder: ``bernoulli`` (continuous BCE on [0, 1] inputs, sigmoid output) or
#: ``gaussian`` (squared error, linear output).
LIKELIHOOD = {"camera": "bernoulli", "lidar": "bernoulli", "reflectance": "gaussian"}


def subsets_of(modalities: Sequence[str]) -> List[Subset]:
    """All ``2^M - 1`` non-empty subsets, ordered by size then by modality order (docs/formats.md)."""
    mods = tuple(modalities)
    out: List[Subset] = []
    for k in range(1, len(mods) + 1):
        out.extend(itertools.combinations(mods, k))
    return out


class GaussianHeads(nn.Module):
    """Two linear layers parameterising a diagonal Gaussian ``q(z|·)`` (paper Fig. 2c: "linear, distribution
    parameterising layers"). Returns ``(mean, log_variance)``."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.mean = nn.Linear(in_dim, latent_dim)
        self.log_variance = nn.Linear(in_dim, latent_dim)

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.log_variance(h)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class CameraEncoderTrunk(nn.Module):
    """(N, 3, H, W) in [0, 1] → penultimate feature h (N, trunk_hidden): strided 4×4 convolutions, then a dense layer
    over the flattened map concatenated with a global max-pool of the second layer's channels (a small object's
    colour anywhere in the image reaches h directly, whatever its position)."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int], hidden: int):
        super().__init__()
        c, h, w = shape
        layers: List[nn.Module] = []
        for ch in channels:
            layers.append(nn.Sequential(nn.Conv2d(c, ch, 4, 2, 1), nn.ReLU()))
            c, h, w = ch, _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
        self.conv = nn.ModuleList(layers)
        self.pool_at = min(1, len(channels) - 1)
        pooled = channels[self.pool_at]
        self.fc = nn.Sequential(nn.Linear(c * h * w + pooled, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x):
        pooled = None
        for i, layer in enumerate(self.conv):
            x = layer(x)
            if i == self.pool_at:
                pooled = torch.amax(x, dim=(2, 3))
        return self.fc(torch.cat([x.flatten(1), pooled], dim=1))


class CameraDecoder(nn.Module):
    """z (N, D) → logits (N, 3, H, W) (H, W multiples of 2^len(channels)); transposed 4×4 convolutions."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int], hidden: int, latent_dim: int):
        super().__init__()
        c, h, w = shape
        n = len(channels)
        if h % (2 ** n) or w % (2 ** n):
            raise ValueError(f"camera size {h}x{w} must be a multiple of {2 ** n}")
        self.start = (channels[-1], h // 2 ** n, w // 2 ** n)
        self.fc = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                nn.Linear(hidden, channels[-1] * self.start[1] * self.start[2]), nn.ReLU())
        layers: List[nn.Module] = []
        rev = list(channels[::-1]) + [c]
        for i in range(n):
            layers.append(nn.ConvTranspose2d(rev[i], rev[i + 1], 4, 2, 1))
            if i < n - 1:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z):
        return self.deconv(self.fc(z).view(-1, *self.start))


class LidarEncoderTrunk(nn.Module):
    """(N, 1, B) in [0, 1] → h (N, trunk_hidden): strided 1-D convolutions over the beams, then a dense layer."""

    def __init__(self, shape: Sequence[int], channels: Sequence[int], hidden: int):
        super().__init__()
        c, b = shape
        layers: List[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv1d(c, ch, 8, 4, 2), nn.ReLU()]
            c, b = ch, _conv_out(b, 8, 4, 2)
        if b < 1:
            raise ValueError(f"lidar scan of {shape[1]} beams is too short for {len(channels)} conv layers")
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * b, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x):
        return self.fc(self.conv(x))


class LidarObjectTrunk(nn.Module):
    """(N, 1, B) in [0, 1] → h (N, hidden): an object-centred depth profile of the scan, then 1-D convolutions.

    The object of interest is the nearest return within ±``front`` rad of the sensor's forward axis (the robot faces
    the object it inspects). Around that return (range r₀, bearing θ₀) the scan is sampled on a fixed lateral grid
    (``grid_points`` points every ``grid_step`` m, the beam nearest to bearing θ₀ + atan(y / r₀) for lateral offset
    y) and turned into depth relative to r₀ (r·cos(θ − θ₀) − r₀, metres, clipped to [−0.01, 0.05]), scaled ×20, so
    that the profile does not depend on the distance. A few millimetres of depth tell a cylinder's arc from a
    cube's face or corner; in the whole scan normalised by ``range_max`` they are invisible to a plain
    convolutional encoder. Everything (ArgMin, Atan, Round, GatherElements, Cos) exports to ONNX.
    """

    def __init__(self, shape: Sequence[int], preprocessing: Mapping, channels: Sequence[int], hidden: int,
                 grid_points: int = 41, grid_step: float = 0.0025, front: float = 0.7):
        super().__init__()
        _, b = shape
        self.inc = float(preprocessing["angle_increment"])
        theta = float(preprocessing["angle_min"]) + self.inc * torch.arange(b, dtype=torch.float32)
        self.range_max = float(preprocessing["range_max"])
        self.register_buffer("theta", theta, persistent=False)
        self.register_buffer("front_penalty", (theta.abs() > front).float() * 1e3, persistent=False)
        half = (grid_points - 1) / 2
        self.register_buffer("grid", (torch.arange(grid_points, dtype=torch.float32) - half) * grid_step,
                             persistent=False)
        self.beams = b
        c, w = 1, grid_points
        layers: List[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv1d(c, ch, 5, 2, 2), nn.ReLU()]
            c, w = ch, _conv_out(w, 5, 2, 2)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c * w + 1, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x):
        r = x[:, 0, :] * self.range_max                                   # (N, B) metres
        i0 = torch.argmin(r + self.front_penalty, dim=1, keepdim=True)     # (N, 1) nearest return in front
        r0 = torch.gather(r, 1, i0)                                        # (N, 1)
        dth = torch.atan(self.grid[None, :] / r0.clamp_min(0.02))          # (N, G) bearing of each lateral offset
        idx = (i0 + torch.round(dth / self.inc).long()).clamp(0, self.beams - 1)
        rg = torch.gather(r, 1, idx)
        th = self.theta[idx] - self.theta[i0]
        depth = (rg * torch.cos(th) - r0).clamp(-0.01, 0.05) * 20.0
        h = self.conv(depth[:, None, :]).flatten(1)
        return self.fc(torch.cat([h, r0], dim=1))


class MLPDecoder(nn.Module):
    """z (N, D) → (N, *out_shape) through ReLU MLP layers (used for lidar scans and reflectance)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        dims = [latent_dim, *hidden]
        layers: List[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        out = 1
        for s in out_shape:
            out *= int(s)
        layers.append(nn.Linear(dims[-1], out))
        self.net = nn.Sequential(*layers)
        self.out_shape = tuple(int(s) for s in out_shape)

    def forward(self, z):
        return self.net(z).view(-1, *self.out_shape)


class MLPTrunk(nn.Module):
    """(N, D_in) → h (N, hidden[-1]) through ReLU layers (reflectance β-VAE; the M2VAE's unimodal trunks f_m)."""

    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: List[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x):
        return self.net(x)


class BetaVAE(nn.Module):
    """β-VAE of one modality (paper Eq. 1 with β, Sec. V-D): Gaussian posterior ``q(z|x) = N(mean, exp(log_variance))``,
    decoder producing the mean of ``p(x|z)`` (after ``output_activation``).

    Args:
        modality: ``camera``, ``lidar`` or ``reflectance``.
        preprocessing: the sensor config (docs/formats.md) fixing the input shape.
        latent_dim: ``D_*`` (the M2VAE's input size per modality; paper: 10).
        arch: layer sizes, see :data:`DEFAULT_ARCH`.
        aux_classes: > 0 adds a linear class read-out of the latent mean used only by the auxiliary loss of
            :func:`m2vae_fusion.training.losses.betavae_loss` (not part of the bundle).
    """

    def __init__(self, modality: str, preprocessing: Mapping, latent_dim: int = 10, arch: Mapping | None = None,
                 aux_classes: int = 0):
        super().__init__()
        a = dict(DEFAULT_ARCH, **(arch or {}))
        self.modality = modality
        self.input_shape = tuple(input_shape(modality, preprocessing))
        self.latent_dim = int(latent_dim)
        self.likelihood = LIKELIHOOD[modality]
        if modality == "camera":
            self.trunk = CameraEncoderTrunk(self.input_shape, a["camera_channels"], a["trunk_hidden"])
            self.decoder = CameraDecoder(self.input_shape, a["camera_channels"], a["trunk_hidden"], latent_dim)
        elif modality == "lidar":
            # a target-centred window (crop enabled) is already object-centred: plain convolutions over it
            if a.get("lidar_encoder", "object") == "object" and not crop_config(preprocessing):
                self.trunk = LidarObjectTrunk(self.input_shape, preprocessing, a["lidar_channels"], a["trunk_hidden"])
            else:
                self.trunk = LidarEncoderTrunk(self.input_shape, a["lidar_channels"], a["trunk_hidden"])
            self.decoder = MLPDecoder(latent_dim, [a["trunk_hidden"] // 2, a["trunk_hidden"]], self.input_shape)
        elif modality == "reflectance":
            self.trunk = MLPTrunk(self.input_shape[0], a["reflectance_hidden"])
            self.decoder = MLPDecoder(latent_dim, list(a["reflectance_hidden"])[::-1], self.input_shape)
        else:
            raise KeyError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        self.heads = GaussianHeads(self.trunk.out_dim, latent_dim)
        # training-only linear read-out of the latent mean (auxiliary class loss; not exported)
        self.aux = nn.Linear(latent_dim, aux_classes) if aux_classes > 0 else None
        # feature standardisation (identity until set_standardization after training): the exported encoder
        # returns (mean - shift) / scale, the exported decoder takes that feature space back
        self.register_buffer("feature_shift", torch.zeros(self.latent_dim))
        self.register_buffer("feature_scale", torch.ones(self.latent_dim))

    @property
    def input_dim(self) -> int:
        """``D_x``: number of input values (for β = β_norm · D_x / D_z, paper Sec. III-A)."""
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    def encode_raw(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (N, *input_shape) → (mean, log_variance) of ``q(z|x)`` in the β-VAE's own latent space, each (N, D_*)
        (what the β-ELBO of :func:`m2vae_fusion.training.losses.betavae_loss` is computed on)."""
        return self.heads(self.trunk(x))

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (N, *input_shape) → the feature (mean, log_variance), each (N, D_*): :meth:`encode_raw` standardised
        per dimension, ``mean' = (mean − shift) / scale``, ``log_variance' = log_variance − 2 log scale``
        (identity until :meth:`set_standardization`; what ``betavae_<m>_encoder.onnx`` returns)."""
        mu, logvar = self.encode_raw(x)
        return (mu - self.feature_shift) / self.feature_scale, logvar - 2.0 * torch.log(self.feature_scale)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z in the β-VAE's own latent space → decoder output before the output activation (logits for
        ``bernoulli``)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Feature z (the space :meth:`encode` returns) → mean of ``p(x|z)`` in input space (what
        ``betavae_<m>_decoder.onnx`` returns)."""
        out = self.decoder(z * self.feature_scale + self.feature_shift)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @torch.no_grad()
    def set_standardization(self, shift, scale) -> None:
        """Set the feature standardisation: ``shift``, ``scale`` float (D_*,) (scale > 0), e.g. the mean and standard
        deviation of the latent means over the training split.

        Raises:
            ValueError: wrong length, non-finite values or a scale ≤ 0.
        """
        sh = torch.as_tensor(shift, dtype=torch.float32).reshape(-1)
        sc = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if sh.numel() != self.latent_dim or sc.numel() != self.latent_dim:
            raise ValueError(f"standardisation needs {self.latent_dim} values, got {sh.numel()} / {sc.numel()}")
        if not (torch.isfinite(sh).all() and torch.isfinite(sc).all() and (sc > 0).all()):
            raise ValueError("standardisation shift/scale must be finite and scale > 0")
        self.feature_shift.copy_(sh)
        self.feature_scale.copy_(sc)

    def load_checkpoint_state(self, state: Mapping, with_aux: bool = False) -> None:
        """Load a checkpoint's state dict (the training-only ``aux.*`` read-out only ``with_aux``); a checkpoint
        written before feature standardisation existed loads with the identity."""
        st = {k: t for k, t in state.items() if with_aux or not k.startswith("aux.")}
        st.setdefault("feature_shift", torch.zeros(self.latent_dim))
        st.setdefault("feature_scale", torch.ones(self.latent_dim))
        self.load_state_dict(st)


class M2VAE(nn.Module):
    """Multi-modal VAE over any number ``M ≥ 2`` of modalities (paper Sec. III-A, Fig. 2c; derivation Eq. 83).

    Architecture (paper Fig. 2c, Sec. V-A): each modality ``m`` has a trunk ``h_m = f_m(x_m)`` (MLP ``hidden``, e.g.
    128/ReLU → 64/ReLU) and Gaussian heads; a subset encoder for ``|S| ≥ 2`` takes the concatenated penultimate
    features ``[h_m]_{m∈S}`` through one ``fusion_hidden``/ReLU layer into its own heads. ``2^M − 1`` encoders,
    ``M`` decoders ``p_m(x_m|z)`` (mirror MLP, linear or sigmoid output).

    Args:
        modalities: names in bundle order.
        input_dims: ``D_m`` per modality (β-VAE feature size ``D_*`` for the sensor model, 2 for the MoG benchmark).
        latent_dim: ``D_z``.
        hidden: trunk widths.
        fusion_hidden: width of the subset encoders' fusion layer.
        output_activation: ``None`` (linear, Gaussian likelihood) or ``"sigmoid"``.
    """

    def __init__(self, modalities: Sequence[str], input_dims: Mapping[str, int], latent_dim: int = 10,
                 hidden: Sequence[int] = (128, 64), fusion_hidden: int = 64, output_activation: str | None = None):
        super().__init__()
        if len(modalities) < 2:
            raise ValueError("the M2VAE needs at least two modalities")
        self.modalities = tuple(modalities)
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.latent_dim = int(latent_dim)
        self.subsets = subsets_of(self.modalities)
        self.output_activation = output_activation
        self.trunks = nn.ModuleDict({m: MLPTrunk(self.input_dims[m], hidden) for m in self.modalities})
        h = int(hidden[-1])
        self.fusion = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for s in self.subsets:
            key = subset_key(s)
            if len(s) == 1:
                self.heads[key] = GaussianHeads(h, latent_dim)
            else:
                self.fusion[key] = nn.Sequential(nn.Linear(h * len(s), fusion_hidden), nn.ReLU())
                self.heads[key] = GaussianHeads(fusion_hidden, latent_dim)
        self.decoders = nn.ModuleDict({m: MLPDecoder(latent_dim, list(hidden)[::-1], (self.input_dims[m],))
                                       for m in self.modalities})

    def subset_dim(self, subset: Iterable[str]) -> int:
        """``D_S = Σ_{m∈S} D_m`` (input dimension of a subset, for β_S = β_norm · D_S / D_z)."""
        return sum(self.input_dims[m] for m in subset)

    def encode(self, subset: Sequence[str], xs: Mapping[str, torch.Tensor],
               trunk_cache: Dict[str, torch.Tensor] | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``q_S(z | x_S)``: returns (mean, log_variance) for the subset ``S`` from ``xs[m]`` (N, D_m), m ∈ S.

        ``trunk_cache`` (optional dict) reuses ``h_m`` between subsets of one batch.
        """
        hs = []
        for m in subset:
            if trunk_cache is not None and m in trunk_cache:
                hs.append(trunk_cache[m])
                continue
            hm = self.trunks[m](xs[m])
            if trunk_cache is not None:
                trunk_cache[m] = hm
            hs.append(hm)
        key = subset_key(subset)
        if len(subset) == 1:
            return self.heads[key](hs[0])
        return self.heads[key](self.fusion[key](torch.cat(hs, dim=1)))

    def decode(self, m: str, z: torch.Tensor) -> torch.Tensor:
        """Mean of ``p_m(x_m | z)``."""
        out = self.decoders[m](z)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out


class ClassHead(nn.Module):
    """Class-belief head: latent mean z (N, D_z) → logits (N, C); one head shared by all subsets (the M2VAE's
    coherent latent space, paper Sec. V-A: "only one classifier is necessary"). ``temperature`` (calibrated on the
    val split) is applied in :meth:`probabilities` and folded into ``head.onnx``."""

    def __init__(self, latent_dim: int, n_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, z):
        return self.net(z)

    def probabilities(self, z):
        return torch.softmax(self.net(z) / self.temperature, dim=-1)
