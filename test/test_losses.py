"""Loss pieces of the β-VAE / M2VAE objective against hand-computed values (design.md §2; paper Eq. 1-19;
derivation Eq. 83, 115-126)."""
import math

import pytest
import torch

from m2vae_fusion.training import losses as L
from m2vae_fusion.training.networks import M2VAE, BetaVAE, subset_key, subsets_of


def test_gaussian_kl_closed_form():
    # KL(N([1, 0], diag[1, 4]) || N(0, I)) = ½[(1 + 1 − 1 − 0) + (4 + 0 − 1 − ln 4)]
    mu = torch.tensor([[1.0, 0.0]])
    lv = torch.tensor([[0.0, math.log(4.0)]])
    assert L.gaussian_kl(mu, lv).item() == pytest.approx(0.5 * (1 + 3 - math.log(4)), rel=1e-6)
    # KL(N(0, 1) || N(1, e²)) = ½[2 − 0 + (1 + 1)/e² − 1] = ½ + 1/e²
    kl = L.gaussian_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.full((1, 1), 2.0))
    assert kl.item() == pytest.approx(0.5 + math.exp(-2), rel=1e-6)
    # identical distributions: 0; and agrees with torch.distributions on random values
    assert L.gaussian_kl(mu, lv, mu, lv).abs().max().item() < 1e-7
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(5, 3, generator=g) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(a, torch.exp(0.5 * b)),
                                            torch.distributions.Normal(c, torch.exp(0.5 * d))).sum(1)
    torch.testing.assert_close(L.gaussian_kl(a, b, c, d), ref)


def test_reconstruction_terms():
    x = torch.tensor([[0.0, 1.0]])
    out = torch.tensor([[0.5, 0.5]])
    assert L.reconstruction_nll("gaussian", x, out).item() == pytest.approx(0.5)
    assert L.reconstruction_nll("gaussian", x, out, with_constant=True).item() == pytest.approx(
        0.5 + math.log(math.pi))
    # continuous BCE with logit 0 (p = .5): 2·ln 2
    assert L.reconstruction_nll("bernoulli", x, torch.zeros(1, 2)).item() == pytest.approx(2 * math.log(2))
    with pytest.raises(ValueError):
        L.reconstruction_nll("poisson", x, out)


def test_beta_normalisation():
    assert L.beta_from_norm(0.01, 12288, 10) == pytest.approx(12.288)
    assert L.beta_from_norm(0.01, 30, 10) == pytest.approx(0.03)


def test_recursion_weights_two_modalities():
    w = L.subset_weights(["a", "b"])
    assert w == {("a",): 0.5, ("b",): 0.5, ("a", "b"): 0.5}  # ½ (L_a + L_b + L_VI(ab)), paper Eq. 9-15


def test_recursion_weights_three_modalities():
    w = L.subset_weights(["a", "b", "c"])
    for s, v in w.items():
        expect = {1: 1 / 3, 2: 1 / 6, 3: 1 / 3}[len(s)]  # derivation Eq. 115-126
        assert v == pytest.approx(expect), s
    assert len(w) == 7


def test_recursion_weights_four_modalities():
    # unrolled by hand: VI(abcd) 1/4; each triple c = 1/4 → 1/12; each pair sits in 2 triples: c = 2·(1/4)/3 = 1/6
    # → 1/12; each single sits in 3 pairs: c = 3·(1/6)/2 = 1/4
    w = L.subset_weights(["a", "b", "c", "d"])
    for s, v in w.items():
        assert v == pytest.approx({1: 1 / 4, 2: 1 / 12, 3: 1 / 12, 4: 1 / 4}[len(s)]), s


def test_mutual_pairs_each_once():
    pairs = L.mutual_pairs(["a", "b", "c"])
    assert len(pairs) == 9 and len(set(pairs)) == 9
    assert (("a", "b", "c"), ("a", "b")) in pairs and (("a", "b"), ("b",)) in pairs
    assert all(len(s) == len(c) + 1 and set(c) < set(s) for s, c in pairs)
    assert sum(1 for s, _ in pairs if s == ("a", "b", "c")) == 3
    assert len(L.mutual_pairs(["a", "b"])) == 2


class _Heads:
    """Fixed affine 'encoders' and 'decoders' on 1-D data, so that every term can be computed by hand."""

    def __init__(self):
        self.modalities = ("a", "b")
        self.subsets = subsets_of(self.modalities)
        self.latent_dim = 1
        self.output_activation = None
        self.decoders = {"a": lambda z: z, "b": lambda z: z + 1.0}

    def subset_dim(self, s):
        return len(s)

    def encode(self, s, xs, cache=None):
        if s == ("a",):
            return xs["a"], torch.zeros_like(xs["a"])
        if s == ("b",):
            return xs["b"] - 1.0, torch.full_like(xs["b"], math.log(2.0))
        return (xs["a"] + xs["b"]) / 2, torch.full_like(xs["a"], -1.0)


def _kl(m1, v1, m2=0.0, v2=1.0):
    return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def test_m2vae_loss_by_hand():
    xa, xb = 1.0, 0.5
    bn, al, ar = 0.1, 0.5, 2.0
    out = L.m2vae_loss(_Heads(), {"a": torch.tensor([[xa]]), "b": torch.tensor([[xb]])}, beta_norm=bn, alpha=al,
                       alpha_reenc=ar, sample=False)
    # a: z = 1, dec_a = 1 → rec 0; KL(N(1,1)||p) = ½; re-encoding x' = 1 → same q → 0
    ta = 0.0 + bn * 1 * _kl(1.0, 1.0)
    # b: z = −0.5, dec_b = 0.5 → rec 0; KL(N(−.5, 2)||p); x'_b = .5 = x_b → reenc 0
    tb = bn * _kl(-0.5, 2.0)
    # ab: z = .75, var e^-1; dec_a = .75 (err .25), dec_b = 1.75 (err 1.25); β_ab = bn·2/1
    v = math.exp(-1)
    rec = 0.25 ** 2 + 1.25 ** 2
    mutual = _kl(0.75, v, 1.0, 1.0) + _kl(0.75, v, -0.5, 2.0)
    reenc = _kl(0.75, v, (0.75 + 1.75) / 2, v)  # q_ab(x') with x' = (.75, 1.75)
    tab = rec + 2 * bn * _kl(0.75, v) + al * mutual + ar * reenc
    expect = 0.5 * ta + 0.5 * tb + 0.5 * tab
    assert out["loss"].item() == pytest.approx(expect, rel=1e-5)
    assert out["rec/a+b"].item() == pytest.approx(rec, rel=1e-6)
    assert out["reenc/a+b"].item() == pytest.approx(reenc, rel=1e-5)
    # without the re-encoding term (ablation) it disappears from the loss
    out0 = L.m2vae_loss(_Heads(), {"a": torch.tensor([[xa]]), "b": torch.tensor([[xb]])}, beta_norm=bn, alpha=al,
                        alpha_reenc=0.0, sample=False)
    assert out0["loss"].item() == pytest.approx(expect - 0.5 * ar * reenc, rel=1e-5)


def test_m2vae_loss_masks_missing_modalities():
    """A sample without b contributes only its unimodal a term (weight ½); batch mean over 2 samples."""
    x = {"a": torch.tensor([[1.0], [1.0]]), "b": torch.tensor([[0.5], [123.0]])}
    present = torch.tensor([[True, True], [True, False]])
    both = L.m2vae_loss(_Heads(), x, present, beta_norm=0.1, alpha=0.5, alpha_reenc=2.0, sample=False)
    first = L.m2vae_loss(_Heads(), {k: v[:1] for k, v in x.items()}, beta_norm=0.1, alpha=0.5, alpha_reenc=2.0,
                         sample=False)
    only_a = 0.5 * 0.1 * _kl(1.0, 1.0)
    assert both["loss"].item() == pytest.approx((first["loss"].item() + only_a) / 2, rel=1e-5)
    assert torch.isfinite(both["loss"])


def test_gradients_reach_every_subset_encoder():
    torch.manual_seed(0)
    mods = ["camera", "lidar", "reflectance"]
    model = M2VAE(mods, {m: 4 for m in mods}, latent_dim=3, hidden=(8, 6), fusion_hidden=5)
    xs = {m: torch.randn(16, 4) for m in mods}
    out = L.m2vae_loss(model, xs, beta_norm=0.01, alpha=0.01, alpha_reenc=1.0)
    out["loss"].backward()
    for s in model.subsets:
        key = subset_key(s)
        for name, p in model.heads[key].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{key} head {name}"
        if len(s) > 1:
            for name, p in model.fusion[key].named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{key} fusion {name}"
    for m in mods:
        assert all(p.grad.abs().sum() > 0 for p in model.trunks[m].parameters())
        assert all(p.grad.abs().sum() > 0 for p in model.decoders[m].parameters())


def test_missing_modality_trains_only_its_subsets():
    """Samples holding only the camera give gradient to the camera encoder but none to any subset encoder that
    needs another modality."""
    torch.manual_seed(0)
    mods = ["camera", "lidar", "reflectance"]
    model = M2VAE(mods, {m: 4 for m in mods}, latent_dim=3, hidden=(8, 6), fusion_hidden=5)
    xs = {m: torch.randn(8, 4) for m in mods}
    present = torch.zeros(8, 3, dtype=torch.bool)
    present[:, 0] = True
    L.m2vae_loss(model, xs, present)["loss"].backward()
    assert model.heads["camera"].mean.weight.grad.abs().sum() > 0
    for key in ("lidar", "camera+lidar", "lidar+reflectance", "camera+lidar+reflectance"):
        g = model.heads[key].mean.weight.grad
        assert g is None or g.abs().sum() == 0, key


def test_betavae_loss_pieces():
    torch.manual_seed(0)
    vae = BetaVAE("reflectance", {"beams": 4, "range_max": 0.6, "intensity_max": 1.0}, latent_dim=3)
    x = torch.rand(5, 8)
    out = L.betavae_loss(vae, x, beta_norm=0.3, sample=False)
    mu, lv = vae.encode(x)
    rec = ((x - vae.decode(mu)) ** 2).sum(1)
    torch.testing.assert_close(out["loss"], rec + 0.3 * 8 / 3 * L.gaussian_kl(mu, lv))


def test_betavae_auxiliary_class_loss():
    """aux = CE of the linear read-out of the mean, weighted like β (aux_weight·D_x/D_z), unknown labels masked."""
    torch.manual_seed(0)
    vae = BetaVAE("reflectance", {"beams": 4, "range_max": 0.6, "intensity_max": 1.0}, latent_dim=3, aux_classes=8)
    x = torch.rand(4, 8)
    labels = torch.tensor([1, -1, 7, 0])
    out = L.betavae_loss(vae, x, beta_norm=0.3, sample=False, labels=labels, aux_weight=0.5)
    plain = L.betavae_loss(vae, x, beta_norm=0.3, sample=False)
    mu, _ = vae.encode(x)
    ce = torch.nn.functional.cross_entropy(vae.aux(mu), labels.clamp_min(0), reduction="none")
    ce[1] = 0.0
    torch.testing.assert_close(out["aux"], ce)
    torch.testing.assert_close(out["loss"], plain["loss"] + 0.5 * 8 / 3 * ce)
    assert out["aux"][1] == 0
