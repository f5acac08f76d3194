"""``train.compile``: the compiled networks compute what the eager ones do, and a fade-in does not
recompile at every alpha (Dynamo specialises Python floats: one graph per value, then a silent
fall-back to eager at its recompile limit).

Runs in float64 so the comparison can be tight: compiling changes only the order of summation and
fuses pointwise operations, each rounding error ~1e-16 relative; through these networks (a few
dozen layers, reductions of < 10^4 terms, R1's double backward) such errors stay far below 1e-9 of a
gradient's norm, while any change of what is computed (a wrong alpha, a missed term) is of order 1.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from alae_ray.core.config import load_config
from alae_ray.core.phases import ALAEPhases
from alae_ray.core.schedule import stage_at

# No noise: compiled code draws its random numbers differently, and this compares the arithmetic.
OVERRIDES = ["train.noise=false", "train.ema_kimg=0.1"]


@pytest.fixture()
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def grads(phases, names):
    return [p.grad.clone() if p.grad is not None else None
            for n in names for p in getattr(phases.model, n).parameters()]


def phase_grads(phases, x, stage):
    """Each phase's gradients, from the same weights: a zero learning rate keeps them."""
    phases.set_stage(stage)
    out = {}
    loss = phases.discriminator_phase(x, stage)
    out["discriminator"] = (grads(phases, "ED"), loss["loss_d"], loss["r1"])
    loss = phases.generator_phase(stage)
    out["generator"] = (grads(phases, "FG"), loss["loss_g"])
    loss = phases.latent_phase(stage)
    out["latent"] = (grads(phases, "EFG"), loss["loss_lae"])
    phases.iteration += 1
    return out


def test_compiled_phases_compute_the_eager_gradients(float64):
    eager = ALAEPhases(load_config("tiny", OVERRIDES))
    compiled = ALAEPhases(load_config("tiny", OVERRIDES + ["train.compile=true"]))
    for kimg in (2.5, 4.0):  # level 1 fading in (alpha 0.5), then stable
        stage = dataclasses.replace(stage_at(eager.cfg, kimg), lr=0.0)
        x = torch.rand(stage.batch, 3, stage.resolution, stage.resolution,
                       generator=torch.Generator().manual_seed(0)) * 2 - 1
        a, b = phase_grads(eager, x, stage), phase_grads(compiled, x, stage)
        for phase in a:
            ga, gb = a[phase][0], b[phase][0]
            assert [g is None for g in ga] == [g is None for g in gb], phase  # the same parameters reached
            # Against the norm of the phase's whole gradient: some tensors' gradients are zero in exact
            # arithmetic (a bias before an instance norm) and hold only rounding noise, in both.
            scale = torch.cat([g.flatten() for g in ga if g is not None]).norm()
            worst = max((gb_ - ga_).norm() / scale for ga_, gb_ in zip(ga, gb) if ga_ is not None).item()
            assert worst < 1e-9, f"alpha {stage.alpha}, {phase} phase: compiled gradients differ from eager by " \
                                 f"{worst:.2e} of the gradient's norm"
            for la, lb in zip(a[phase][1:], b[phase][1:]):
                assert abs(lb.item() - la.item()) <= 1e-9 * abs(la.item()), (stage.alpha, phase)


def test_a_fade_in_compiles_once_not_per_alpha():
    phases = ALAEPhases(load_config("tiny", ["train.compile=true"]))
    stage = stage_at(phases.cfg, 2.2)  # level 1, early in its fade-in
    assert 0 < stage.alpha < 1
    x = torch.rand(stage.batch, 3, stage.resolution, stage.resolution) * 2 - 1
    for alpha in (0.2, 0.3):  # the first alpha compiles; the second may settle R1/no-R1 variants
        phases.step(x, dataclasses.replace(stage, alpha=alpha))
    graphs = counters["stats"]["unique_graphs"]
    for alpha in (0.4, 0.55, 0.7, 0.85):
        phases.step(x, dataclasses.replace(stage, alpha=alpha))
    assert counters["stats"]["unique_graphs"] == graphs, "a new alpha compiled new graphs"
    phases.check_finite()
