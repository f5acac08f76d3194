"""The ALAE losses as small pure functions (Algorithm 1).

Scores are D(E(.)) logits of shape [N]; every function returns a scalar mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32: autocast's bf16 scores are widened for the losses, float64 is kept
    (``.float()`` would round a float64 run's losses and gradients to float32)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def d_logistic_loss(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """Step I: softplus(D(E(G(F(z))))) + softplus(-D(E(x)))."""
    return F.softplus(fake_score).mean() + F.softplus(-real_score).mean()


def r1_penalty(real_score: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """E||grad_x D(E(x))||^2 on reals (Mescheder et al. 2018); the graph is kept for backward.

    The gradient is with respect to the real images, as in R1 and the authors' code (the paper's
    sentence about "the parameters of E and D" describes what the penalty is then minimised over).
    """
    (grad,) = torch.autograd.grad(real_score.sum(), x_real, create_graph=True)
    return wide(grad).pow(2).flatten(1).sum(1).mean()


def g_nonsaturating_loss(fake_score: torch.Tensor) -> torch.Tensor:
    """Step II: softplus(-D(E(G(F(z)))))."""
    return F.softplus(-fake_score).mean()


def latent_reciprocity_loss(w_target: torch.Tensor, w_rec: torch.Tensor) -> torch.Tensor:
    """Step III: ||F(z) - E(G(F(z)))||^2 with F(z) as a constant target.

    Averaged over elements as in the authors' code, so the learning rates transfer across latent sizes.
    """
    return (wide(w_rec) - wide(w_target.detach())).pow(2).mean()
