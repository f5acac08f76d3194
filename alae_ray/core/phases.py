"""The three-phase update of Algorithm 1, the optimizers, the EMA copy and the RNG streams.

One iteration = ``discriminator_phase`` (E, D), ``generator_phase`` (F, G), ``latent_phase`` (E, G and
F, as the authors' code), each with a fresh z ~ N(0, I), each returning a dict of float losses.

Distributed training: every worker holds the full model and a slice of the global batch. z and the
style-mixing draws come from a generator shared by all workers, sampled for the *global* batch and
sliced per rank, so one worker and N workers with the same global batch see the same latents.
Gradients are averaged across workers explicitly after each backward (as StyleGAN3 does) instead of
through DDP's reducer: three phases freeze different networks, R1 needs a double backward, and
progressive growing leaves blocks unused, all of which DDP handles badly.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import losses
from .config import Config
from .layers import downsample2x, upsample2x
from .model import ALAE
from .schedule import Stage


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; the message names the phase and the iteration."""


@dataclass(frozen=True)
class Shard:
    """This worker's slice of the global batch."""

    rank: int = 0
    world_size: int = 1


def fade_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """During a fade-in reals are blended like G's output: with the 2x-down-then-up image."""
    if alpha >= 1.0 or x.dim() != 4:
        return x
    return torch.lerp(upsample2x(downsample2x(x)), x, alpha)


def ema_beta(batch: int, ema_kimg: float) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000.0)) if ema_kimg > 0 else 0.0


class ALAEPhases:
    def __init__(self, cfg: Config, device: torch.device | str = "cpu", shard: Shard = Shard()):
        self.cfg = cfg
        self.device = torch.device(device)
        self.shard = shard
        t = cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every worker
        self.model = ALAE(cfg.model).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.cuda = self.device.type == "cuda"
        if self.cuda and t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp = self.cuda and t.mixed_precision
        m = self.model
        adam = dict(lr=cfg.schedule.table("lr", cfg.schedule.start_resolution),
                    betas=(t.adam_beta1, t.adam_beta2), eps=1e-8, **({"fused": True} if self.cuda and t.fused_adam else {}))
        self.opt_ED = torch.optim.Adam([*m.E.parameters(), *m.D.parameters()], **adam)
        self.opt_FG = torch.optim.Adam([*m.F.parameters(), *m.G.parameters()], **adam)
        # Shared stream for z and mixing draws (same on every worker), per-worker stream for G's noise.
        self.latent_rng = torch.Generator(self.device).manual_seed(t.seed + 1)
        torch.manual_seed(t.seed + 2 + 7919 * shard.rank)
        self.images_seen = 0  # global count, thousands = kimg
        self.iteration = 0
        self.level: int | None = None

    # --- helpers -------------------------------------------------------------------------------

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000.0

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _z(self, global_batch: int) -> torch.Tensor:
        z = torch.randn(global_batch, self.cfg.model.latent_size, device=self.device, generator=self.latent_rng)
        n = global_batch // self.shard.world_size
        return z[self.shard.rank * n:(self.shard.rank + 1) * n]  # [n, L]

    def _styles(self, global_batch: int, stage: Stage, mixing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Style inputs [n, S, L] for a fresh z (with style mixing if asked) and the unmixed w [n, L].

        Like the authors' ``generate``, every call moves the running average of w (three per iteration).
        """
        m = self.model
        w = m.F(self._z(global_batch))
        self._update_w_avg(w.detach())
        ws = m.broadcast(w, stage.level)
        if not mixing:
            return ws, w
        S = ws.shape[1]
        draw = torch.rand(2, device=self.device, generator=self.latent_rng).tolist()
        w2 = m.F(self._z(global_batch))  # drawn every time, so the stream does not depend on the coin
        if draw[0] < self.cfg.train.style_mixing_prob:
            ws = m.mix(ws, w2, 1 + int(draw[1] * S))  # crossover uniform in 1..S (S: no mixing), as theirs
        return ws, w

    def _update_w_avg(self, w: torch.Tensor) -> None:
        w_mean = w.float().mean(0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(w_mean)  # the global batch's mean, whatever the number of workers
            w_mean /= dist.get_world_size()
        self.model.update_w_avg(w_mean[None], self.cfg.train.w_avg_beta)

    def _check(self, value: torch.Tensor, phase: str, name: str) -> float:
        v = float(value.detach())
        if v != v or v in (float("inf"), float("-inf")):
            raise NonFiniteLossError(f"non-finite {name} ({v}) in the {phase} phase at iteration "
                                     f"{self.iteration} ({self.kimg:.3f} kimg)")
        return v

    def _sync_grads(self, params) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cuda and self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # --- schedule ------------------------------------------------------------------------------

    def set_stage(self, stage: Stage) -> None:
        """Apply the stage's lr; on a level change reset both optimizers' state (authors' practice)."""
        if stage.level != self.level:
            if self.level is not None:
                self.opt_ED.state.clear()
                self.opt_FG.state.clear()
            self.level = stage.level
        for opt in (self.opt_ED, self.opt_FG):
            for group in opt.param_groups:
                group["lr"] = stage.lr

    # --- the three phases ----------------------------------------------------------------------

    def discriminator_phase(self, x: torch.Tensor, stage: Stage) -> dict[str, float]:
        """Step I: update E and D to tell E(x) from E(G(F(z))), with R1 on reals."""
        m, gamma = self.model, self.cfg.train.r1_gamma
        with torch.no_grad(), self._autocast():
            ws, _ = self._styles(stage.batch, stage, mixing=True)
            x_fake = m.G(ws, stage.level, stage.alpha, self.cfg.train.noise)
        x_real = fade_reals(self._prepare(x), stage.alpha).detach().requires_grad_(gamma > 0)
        with self._autocast():
            # Separate passes, as the authors': R1's double backward then runs through the reals only.
            real_score = m.D(m.E(x_real, stage.level, stage.alpha)).float()
            fake_score = m.D(m.E(x_fake.to(x_real.dtype), stage.level, stage.alpha)).float()
            loss_d = losses.d_logistic_loss(real_score, fake_score)
        r1 = losses.r1_penalty(real_score, x_real) if gamma > 0 else torch.zeros((), device=self.device)
        loss = loss_d + 0.5 * gamma * r1
        self._check(loss, "discriminator", "loss_d")
        self.opt_ED.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads([*m.E.parameters(), *m.D.parameters()])
        self.opt_ED.step()
        return {"loss_d": loss_d.item(), "r1": r1.item(), "real_score": real_score.mean().item(),
                "fake_score": fake_score.mean().item()}

    def generator_phase(self, stage: Stage) -> dict[str, float]:
        """Step II: update F and G so that D(E(G(F(z)))) calls fakes real (non-saturating)."""
        m = self.model
        m.E.requires_grad_(False)
        m.D.requires_grad_(False)
        try:
            with self._autocast():
                ws, _ = self._styles(stage.batch, stage, mixing=True)
                fake_score = m.D(m.E(m.G(ws, stage.level, stage.alpha, self.cfg.train.noise),
                                     stage.level, stage.alpha)).float()
                loss_g = losses.g_nonsaturating_loss(fake_score)
            self._check(loss_g, "generator", "loss_g")
            self.opt_FG.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            m.E.requires_grad_(True)
            m.D.requires_grad_(True)
        self._sync_grads([*m.F.parameters(), *m.G.parameters()])
        self.opt_FG.step()
        return {"loss_g": loss_g.item()}

    def latent_phase(self, stage: Stage) -> dict[str, float]:
        """Step III: update E, G and F so that E(G(w)) returns w = F(z) (latent reciprocity).

        As in the authors' code, w feeds G with its gradient and only the loss target is detached,
        so F is updated here too (Algorithm 1 lists E and G only).
        """
        m = self.model
        with self._autocast():
            ws, w = self._styles(stage.batch, stage, mixing=False)
            w_rec = m.E(m.G(ws, stage.level, stage.alpha, self.cfg.train.noise), stage.level, stage.alpha)
            loss_lae = losses.latent_reciprocity_loss(w, w_rec)
        self._check(loss_lae, "latent", "loss_lae")
        self.opt_ED.zero_grad(set_to_none=True)
        self.opt_FG.zero_grad(set_to_none=True)
        loss_lae.backward()
        self._sync_grads([*m.E.parameters(), *m.F.parameters(), *m.G.parameters()])
        # The authors' optimizer steps D here with a zero gradient (torch 1.x zero_grad keeps zeros):
        # no move (beta1 = 0), but its second moment decays and its step count advances, as theirs.
        for p in m.D.parameters():
            p.grad = torch.zeros_like(p)
        self.opt_ED.step()
        self.opt_FG.step()
        return {"loss_lae": loss_lae.item()}

    def step(self, x: torch.Tensor, stage: Stage) -> dict[str, float]:
        """One full iteration on this worker's slice ``x`` of the global batch ``stage.batch``."""
        self.set_stage(stage)
        out = self.discriminator_phase(x, stage)
        out.update(self.generator_phase(stage))
        out.update(self.latent_phase(stage))
        self.update_ema(stage.batch)
        self.images_seen += stage.batch
        self.iteration += 1
        return out

    @torch.no_grad()
    def update_ema(self, batch: int) -> None:
        beta = ema_beta(batch, self.cfg.train.ema_kimg)
        src, dst = list(self.model.parameters()), list(self.ema.parameters())
        torch._foreach_lerp_(dst, src, 1.0 - beta)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers()):
            b_ema.copy_(b)

    # --- state ---------------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor an exact resume needs, flat and named (for safetensors)."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        for name, opt in (("opt_ED", self.opt_ED), ("opt_FG", self.opt_FG)):
            for idx, st in opt.state_dict()["state"].items():
                for key, val in st.items():
                    out[f"{name}.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
        out["rng.latent"] = self.latent_rng.get_state()
        out["rng.torch_cpu"] = torch.get_rng_state()
        if self.cuda:
            out["rng.torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def progress(self) -> dict:
        return {"images_seen": self.images_seen, "iteration": self.iteration, "level": self.level}

    def load(self, tensors: dict[str, torch.Tensor], progress: dict) -> None:
        """Restore from ``tensors()`` and ``progress()``; exact up to floating-point determinism.

        A checkpoint without optimizer moments or RNG states (an imported model) starts those afresh.
        """
        def section(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.model.load_state_dict(section("model."))
        self.ema.load_state_dict(section("ema."))
        for name, opt in (("opt_ED", self.opt_ED), ("opt_FG", self.opt_FG)):
            sd = opt.state_dict()
            state: dict[int, dict] = {}
            for key, val in section(f"{name}.").items():
                idx, field = key.split(".", 1)
                state.setdefault(int(idx), {})[field] = val
            sd["state"] = state
            opt.load_state_dict(sd)
        if "rng.latent" in tensors:  # absent in imported models, which start their streams afresh
            self.latent_rng.set_state(tensors["rng.latent"])
            torch.set_rng_state(tensors["rng.torch_cpu"])
        if self.cuda and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
        self.images_seen = int(progress["images_seen"])
        self.iteration = int(progress["iteration"])
        self.level = progress.get("level")
