"""Shapes at every level, fade-in exactness, equalized LR, truncation and style mixing."""

import math

import pytest
import torch
import torch.nn.functional as F

from alae_ray.core.config import ModelConfig
from alae_ray.core.layers import EqualConv2d, EqualLinear, downsample2x, upsample2x
from alae_ray.core.model import ALAE

SMALL_1024 = ModelConfig(kind="style", latent_size=16, mapping_layers=2, max_resolution=1024,
                         start_channels=2, max_channels=8, channels=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ALAE(SMALL_1024).eval()


@pytest.mark.parametrize("level", range(9))
def test_shapes_every_level(model, level):
    res = 4 * 2**level
    z = torch.randn(2, 16)
    with torch.no_grad():
        x = model.generate(z, level, noise=True)
        assert x.shape == (2, 3, res, res)
        w = model.encode(x, level)
        assert w.shape == (2, 16)
        assert model.discriminate(w).shape == (2,)
        if level:
            assert model.generate(z, level, alpha=0.3).shape == (2, 3, res, res)
            assert model.encode(x, level, alpha=0.3).shape == (2, 16)
    assert torch.isfinite(x).all() and torch.isfinite(w).all()


@pytest.mark.parametrize("level", [1, 4, 8])
def test_generator_fade_in_endpoints(model, level):
    z = torch.randn(2, 16)
    with torch.no_grad():
        w = model.F(z)
        full = model.decode(w, level, alpha=1.0, noise=False)
        new = model.decode(w, level, alpha=1.0 - 1e-9, noise=False)  # blended code path, alpha ~ 1
        prev = model.decode(w, level - 1, alpha=1.0, noise=False)
        faded_out = model.decode(w, level, alpha=0.0, noise=False)
    assert torch.allclose(new, full, atol=1e-5)
    assert torch.equal(faded_out, upsample2x(prev))  # alpha = 0: exactly the upsampled previous level
    assert not torch.allclose(full, upsample2x(prev), atol=1e-3)


@pytest.mark.parametrize("level", [1, 4, 8])
def test_encoder_fade_in_endpoints(model, level):
    res = 4 * 2**level
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        full = model.encode(x, level, alpha=1.0)
        new = model.encode(x, level, alpha=1.0 - 1e-9)
        faded_out = model.encode(x, level, alpha=0.0)
        prev = model.encode(downsample2x(x), level - 1)
    assert torch.allclose(new, full, atol=1e-5)
    assert torch.equal(faded_out, prev)  # alpha = 0: exactly the previous level on the downsampled image


def test_fade_in_is_a_blend(model):
    w = model.F(torch.randn(2, 16)).detach()
    with torch.no_grad():
        a, b = model.decode(w, 3, 1.0, noise=False), upsample2x(model.decode(w, 2, 1.0, noise=False))
        mid = model.decode(w, 3, 0.25, noise=False)
    assert torch.allclose(mid, 0.75 * b + 0.25 * a, atol=1e-5)


def test_equalized_lr_linear_scale():
    torch.manual_seed(0)
    layer = EqualLinear(400, 300, gain=math.sqrt(2), lrmul=0.01)
    assert layer.coef == pytest.approx(math.sqrt(2) / math.sqrt(400) * 0.01)
    # stored weights are N(0, 1/lrmul): the run-time scale brings them to He init
    assert layer.weight.std().item() == pytest.approx(1 / 0.01, rel=0.05)
    x = torch.randn(5, 400)
    expected = F.linear(x, layer.weight * layer.coef, layer.bias * 0.01)
    assert torch.allclose(layer(x), expected)
    # unit-variance input -> output variance ~ gain^2 (He init), whatever the fan-in
    big = torch.randn(4000, 400)
    assert layer(big).var().item() == pytest.approx(2.0, rel=0.1)


def test_equalized_lr_conv_scale_and_equal_speed():
    conv = EqualConv2d(8, 4, 3, gain=1.0)
    assert conv.coef == pytest.approx(1.0 / math.sqrt(8 * 9))
    # Adam's first step moves every stored weight by ~lr, so the *effective* relative change of a
    # layer does not depend on its fan-in: that is the point of equalized learning rate.
    torch.manual_seed(0)
    small, large = EqualLinear(16, 8), EqualLinear(1024, 8)
    rel = []
    for layer, n in ((small, 16), (large, 1024)):
        opt = torch.optim.Adam(layer.parameters(), lr=0.01, betas=(0.0, 0.99))
        before = layer.weight.detach().clone()
        layer(torch.randn(32, n)).pow(2).sum().backward()
        opt.step()
        rel.append(((layer.weight - before).norm() / before.norm()).item())
    assert rel[0] == pytest.approx(rel[1], rel=0.1)


def test_truncation_identity_and_pull(model):
    model.w_avg.copy_(torch.randn(18, 16))  # one average per style input, as the authors keep it
    ws = model.broadcast(model.F(torch.randn(3, 16)), 4).detach()  # S = 10
    assert torch.equal(model.truncate(ws, 1.0, 8), ws)
    t = model.truncate(ws, 0.5, 4)
    assert torch.allclose(t[:, :4], 0.5 * ws[:, :4] + 0.5 * model.w_avg[:4])
    assert torch.equal(t[:, 4:], ws[:, 4:])
    assert torch.allclose(model.truncate(ws, 0.0, None), model.w_avg[:10].expand_as(ws))
    per_sample = model.truncate(ws, torch.tensor([1.0, 0.5, 0.0]), 4)  # one psi per image
    assert torch.equal(per_sample[0], ws[0]) and torch.allclose(per_sample[1], t[1])
    assert torch.allclose(per_sample[2, :4], model.w_avg[:4])


def test_style_mixing_switches_at_crossover(model):
    w1, w2 = torch.randn(2, 16), torch.randn(2, 16)
    ws = model.broadcast(w1, 3)  # S = 8
    mixed = model.mix(ws, w2, 5)
    assert torch.equal(mixed[:, :5], w1.unsqueeze(1).expand(-1, 5, -1))
    assert torch.equal(mixed[:, 5:], w2.unsqueeze(1).expand(-1, 3, -1))
    # the generator really uses the per-layer styles: changing only the fine styles changes the image
    with torch.no_grad():
        a = model.decode(ws, 3, noise=False)
        b = model.decode(mixed, 3, noise=False)
        c = model.decode(model.mix(ws, w2, 8), 3, noise=False)  # crossover past the end: no change
    assert not torch.allclose(a, b)
    assert torch.equal(a, c)


def test_mlp_is_the_authors_mnist_model():
    """E 784-1024-1024-50 (leaky ReLU 0.2, 0.01 on w), G 50-1024-1024-784 (0.01, linear out), F of 6
    layers with lr multiplier 0.1, D three linear layers without activations."""
    from alae_ray.core.config import load_config

    cfg = load_config("mnist").model
    assert (cfg.mapping_layers, cfg.mapping_lrmul, cfg.pixel_min, cfg.pixel_max) == (6, 0.1, 0.0, 1.0)
    m = ALAE(cfg)
    x = torch.rand(4, 784)
    w = m.encode(x, 0)
    assert w.shape == (4, 50) and m.E.features(x).shape == (4, 1024)
    h = m.E.features(x)
    assert torch.allclose(w, F.leaky_relu(m.E.fc3(h), 0.01))
    assert torch.equal(h, F.leaky_relu(m.E.fc2(F.leaky_relu(m.E.fc1(x), 0.2)), 0.2))
    g = F.leaky_relu(m.G.fc2(F.leaky_relu(m.G.fc1(w), 0.01)), 0.01)
    assert torch.allclose(m.decode(w, 0), m.G.fc3(g))
    assert m.generate(torch.randn(4, 50), 0).shape == (4, 784)
    assert m.style_layers(0) == 1 and len(m.F.map_blocks) == 6
    # D is affine: D(a + b) - D(b) = D(a) - D(0)
    a, b, zero = torch.randn(3, 50), torch.randn(3, 50), torch.zeros(3, 50)
    assert torch.allclose(m.D(a + b) - m.D(b), m.D(a) - m.D(zero), atol=1e-5)
