"""The three-phase update of Algorithm 1, the optimizers, the EMA copy and the RNG streams.

One iteration = ``discriminator_phase`` (E, D), ``generator_phase`` (F, G), ``latent_phase`` (E, G and
F, as the authors' code), each with a fresh z ~ N(0, I), each returning a dict of float losses.

Distributed training: every worker holds the full model and its part of the global batch (``Shard``:
the rows of its data streams, equal or not), processed in micro-batches of ``train.batch_gpu`` with
gradient accumulation. z, G's noise images and the style-mixing draws come from generators shared by
all workers, sampled for the *global* batch and sliced the same way, so any number of workers and any
micro-batch size see the same latents and noise and compute the same gradients (the StyleGAN3 scheme
for z, with unequal parts; StyleGAN draws noise per worker, which would tie the run to its size).
Gradients are averaged across workers explicitly after each backward (as StyleGAN3 does), each
worker's weighted by its share of the batch, instead of through DDP's reducer: three phases freeze
different networks, R1 needs a double backward, and progressive growing leaves blocks unused, all of
which DDP handles badly.
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
from .schedule import Stage, split_streams


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; the message names the phase and the iteration."""


@dataclass(frozen=True)
class Shard:
    """This worker's part of every global batch: the rows of the data streams it serves
    (``schedule.split_streams``), so that W workers take unequal parts where W does not divide the
    streams. ``streams`` 0: one per worker (equal parts)."""

    rank: int = 0
    world_size: int = 1
    streams: int = 0

    @property
    def stream_count(self) -> int:
        return self.streams or self.world_size

    @property
    def served(self) -> range:
        return split_streams(self.stream_count, self.rank, self.world_size)

    @property
    def weight(self) -> float:
        """The share of every global batch this worker takes: what its means weigh in the average."""
        return len(self.served) / self.stream_count

    def part(self, batch: int) -> slice:
        """This worker's rows of a global batch of ``batch``."""
        v, served = self.stream_count, self.served
        if batch % v:
            raise ValueError(f"a global batch of {batch} does not split into {v} equal data streams")
        return slice(served.start * batch // v, served.stop * batch // v)


def fade_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """During a fade-in reals are blended like G's output: with the 2x-down-then-up image."""
    if alpha >= 1.0 or x.dim() != 4:
        return x
    return torch.lerp(upsample2x(downsample2x(x)), x, alpha)


def ema_beta(batch: int, ema_kimg: float) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000.0)) if ema_kimg > 0 else 0.0


PHASES = ("discriminator", "generator", "latent")
LOSS_NAMES = ("loss_d", "loss_g", "loss_lae")


@dataclass(frozen=True)
class Nets:
    """The four networks as the forward passes call them: the model's own, or torch.compile'd views
    of them (same parameters)."""

    F: torch.nn.Module
    G: torch.nn.Module
    E: torch.nn.Module
    D: torch.nn.Module


@dataclass
class Draws:
    """One phase's latent draws, for this worker's part of the global batch."""

    z: torch.Tensor  # [n, L]
    z2: torch.Tensor | None = None  # [n, L]: the second code of style mixing
    crossover: int | None = None  # style inputs < crossover from z, the rest from z2; None: no mixing
    noise: list[torch.Tensor] | None = None  # G's noise inputs, [n or 1, 1, H, W]; None: G's stand-in

    def noise_of(self, part: slice) -> list[torch.Tensor] | None:
        """The noise images of micro-batch ``part`` (an image shared by the batch stays whole)."""
        return None if self.noise is None else [x if len(x) == 1 else x[part] for x in self.noise]


class ALAEPhases:
    PHASES, LOSS_NAMES = PHASES, LOSS_NAMES  # what check_finite names; a baseline trains other phases

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", shard: Shard = Shard()):
        self.cfg = cfg
        self.device = torch.device(device)
        self.shard = shard
        t = cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every worker
        self.model = ALAE(cfg.model).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            # Process-wide switches, set by the object that trains: fixed shapes per level make
            # cuDNN's autotuning pay, and TF32 only touches what autocast leaves in float32.
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = t.tf32
            torch.backends.cudnn.benchmark = True
        if self.cuda and t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp = t.mixed_precision and (self.cuda or t.cpu_autocast)
        m = self.model
        self.nets = Nets(m.F, m.G, m.E, m.D)
        if t.compile:
            # R1's double backward is not supported through compiled graphs: the reals' pass that
            # R1 differentiates calls the eager E and D (self.model), every other pass these.
            # Static shapes: each level recompiles anyway, and Dynamo's cache is shared by every
            # model in the process (keyed by forward's code), so a second one (Tune, PBT, a test)
            # would otherwise get dynamic shapes, which Inductor 2.14 fails to compile here.
            self.nets = Nets(*(torch.compile(net, dynamic=False) for net in (m.F, m.G, m.E, m.D)))
            # One level's graphs per network: with and without gradients for the parameters (phase
            # II freezes E and D) and the input, fading and stable, and one more when alpha first
            # varies (then a symbolic float). Above Dynamo's default limit of 8, which would silently
            # fall back to eager; set_stage resets the count at each level.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        # alpha as the compiled passes take it: a device tensor filled in place (no host sync), since a
        # Python float would be specialised, one graph per value of a fade-in.
        self._alpha_t = torch.ones((), device=self.device)
        adam = dict(lr=cfg.schedule.table("lr", cfg.schedule.start_resolution),
                    betas=(t.adam_beta1, t.adam_beta2), eps=1e-8, **({"fused": True} if self.cuda and t.fused_adam else {}))
        self.opt_ED = torch.optim.Adam([*m.E.parameters(), *m.D.parameters()], **adam)
        self.opt_FG = torch.optim.Adam([*m.F.parameters(), *m.G.parameters()], **adam)
        # Streams shared by all workers: z and G's noise on the device, the style-mixing coins on the
        # CPU (reading them never waits for the device).
        self.latent_rng = torch.Generator(self.device).manual_seed(t.seed + 1)
        self.mixing_rng = torch.Generator().manual_seed(t.seed + 3)
        self.noise_rng = torch.Generator(self.device).manual_seed(t.seed + 4)
        torch.manual_seed(t.seed + 2 + 7919 * shard.rank)  # the process's own stream (the step draws none)
        self.images_seen = 0  # global count, thousands = kimg
        self.iteration = 0
        self.level: int | None = None
        # First iteration at which each phase's loss was not finite (-1: never), kept on the device:
        # checked once per tick (check_finite), so no iteration waits for the device.
        self._nonfinite_at = torch.full((len(self.PHASES),), -1, dtype=torch.long, device=self.device)

    # --- helpers -------------------------------------------------------------------------------

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000.0

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def _alpha(self, stage: Stage) -> float | torch.Tensor:
        """The fade-in weight for the networks: a float, or with ``train.compile`` while fading the
        device tensor (see __init__)."""
        if not self.cfg.train.compile or stage.alpha >= 1.0:
            return stage.alpha
        return self._alpha_t.fill_(stage.alpha)

    def _z(self, global_batch: int) -> torch.Tensor:
        z = torch.randn(global_batch, self.cfg.model.latent_size, device=self.device, generator=self.latent_rng)
        return z[self.shard.part(global_batch)]  # [n, L]

    def _noise(self, global_batch: int, level: int) -> list[torch.Tensor] | None:
        """G's noise inputs up to ``level`` for this worker's part of the global batch (two per block);
        the first, at 4x4, is one image for the whole batch, as the authors' G draws it there."""
        if not self.cfg.train.noise or self.cfg.model.kind != "style":
            return None
        part, out = self.shard.part(global_batch), []
        for i in range(2 * (level + 1)):
            r, n = 4 * 2 ** (i // 2), 1 if i == 0 else global_batch
            x = torch.randn(n, 1, r, r, device=self.device, generator=self.noise_rng)
            out.append(x if n == 1 else x[part])
        return out

    def _draws(self, global_batch: int, stage: Stage, mixing: bool) -> Draws:
        z, noise = self._z(global_batch), self._noise(global_batch, stage.level)
        if not mixing:
            return Draws(z, noise=noise)
        coin, u = torch.rand(2, generator=self.mixing_rng).tolist()
        z2 = self._z(global_batch)  # drawn every time, so the stream does not depend on the coin
        S = self.model.style_layers(stage.level)
        # crossover uniform in 1..S (S: no mixing), as the authors' random.randint(1, S)
        crossover = 1 + int(u * S) if coin < self.cfg.train.style_mixing_prob else None
        return Draws(z, z2, crossover, noise)

    def _styles(self, d: Draws, part: slice, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Style inputs [b, S, L] and the unmixed w [b, L] for one micro-batch of the draws."""
        m, F = self.model, self.nets.F
        w = F(d.z[part])
        ws = m.broadcast(w, level).contiguous()  # the layout mix() returns: one compiled graph for both
        if d.crossover is not None:
            ws = m.mix(ws, F(d.z2[part]), d.crossover)
        return ws, w

    def micro_batches(self, n: int) -> list[tuple[slice, float]]:
        """This worker's ``n`` samples in micro-batches of ``train.batch_gpu`` (the last may be
        smaller; 0: all at once), each with its share of the ``n``: a micro-batch's mean loss weighs
        that much in the accumulated gradient of the worker's mean."""
        b = self.cfg.train.batch_gpu or n
        return [(slice(i, min(i + b, n)), (min(i + b, n) - i) / n) for i in range(0, n, b)]

    @property
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _update_w_avg(self, w_sum: torch.Tensor, n: int) -> None:
        """Like the authors' ``generate``: every phase moves the running average of w (three times per
        iteration), towards the mean of the global batch's w (this worker's ``n`` summed in ``w_sum``)."""
        w_mean = w_sum / n
        if self._distributed:
            w_mean *= self.shard.weight
            dist.all_reduce(w_mean)
        self.model.update_w_avg(w_mean[None], self.cfg.train.w_avg_beta)

    def _flag(self, phase: int, loss: torch.Tensor) -> None:
        """Remember, on the device, the first iteration at which ``phase``'s loss was not finite."""
        first = (~torch.isfinite(loss.detach())) & (self._nonfinite_at[phase] < 0)
        self._nonfinite_at[phase] = torch.where(first, self.iteration, self._nonfinite_at[phase])

    def check_finite(self) -> None:
        """Raise NonFiniteLossError naming the phase and iteration where a loss first was NaN or inf.

        With several workers, every worker raises if any saw one (the earliest iteration of any), so
        none is left waiting in the next all-reduce.
        """
        at = self._nonfinite_at
        if self._distributed:
            never = torch.iinfo(torch.long).max
            at = torch.where(at < 0, never, at)
            dist.all_reduce(at, op=dist.ReduceOp.MIN)
            at = torch.where(at == never, -1, at)
        for phase, at in enumerate(at.tolist()):  # the one read from the device
            if at >= 0:
                raise NonFiniteLossError(f"non-finite {self.LOSS_NAMES[phase]} in the {self.PHASES[phase]} phase at iteration "
                                         f"{at} (seen at iteration {self.iteration}, {self.kimg:.3f} kimg)")

    def _sync_grads(self, params) -> None:
        """Each worker holds the gradient of its mean: the global batch's is their average, weighted
        by the workers' shares."""
        if not self._distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        flat *= self.shard.weight
        dist.all_reduce(flat)
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
        """Apply the stage's lr; on a level change reset both optimizers' state (authors' practice)
        and, with ``train.compile``, drop the last level's graphs (each level compiles its own)."""
        if stage.level != self.level:
            if self.level is not None:
                self.opt_ED.state.clear()
                self.opt_FG.state.clear()
                if self.cfg.train.compile:
                    torch.compiler.reset()
            self.level = stage.level
        for opt in (self.opt_ED, self.opt_FG):
            for group in opt.param_groups:
                group["lr"] = stage.lr

    # --- the three phases ----------------------------------------------------------------------
    # Each phase runs over this worker's micro-batches, each loss scaled by its share of them, so the
    # accumulated gradient is the gradient of the worker's mean; the workers' gradients are then
    # averaged by share. Returned losses are device tensors (means over this worker's samples).

    def discriminator_phase(self, x: torch.Tensor, stage: Stage) -> dict[str, torch.Tensor]:
        """Step I: update E and D to tell E(x) from E(G(F(z))), with R1 on reals."""
        m, n, t = self.model, self.nets, self.cfg.train
        # Lazy R1 (StyleGAN2): every r1_interval-th iteration only, with gamma scaled to match.
        gamma = t.r1_gamma * t.r1_interval if self.iteration % t.r1_interval == 0 else 0.0
        d, a = self._draws(stage.batch, stage, mixing=True), self._alpha(stage)
        parts = self.micro_batches(len(d.z))
        self.opt_ED.zero_grad(set_to_none=True)
        means, w_sum = torch.zeros(4, device=self.device), 0.0
        for part, share in parts:
            with torch.no_grad(), self._autocast():
                ws, w = self._styles(d, part, stage.level)
                x_fake = n.G(ws, stage.level, a, t.noise, d.noise_of(part))
            w_sum = w_sum + losses.wide(w).sum(0)
            x_real = fade_reals(self._prepare(x[part]), stage.alpha).detach().requires_grad_(gamma > 0)
            real = m if gamma > 0 else n  # R1 differentiates this pass twice: eager
            with self._autocast():
                # Separate passes, as the authors': R1's double backward then runs through the reals only.
                real_score = losses.wide(real.D(real.E(x_real, stage.level, a)))
                fake_score = losses.wide(n.D(n.E(x_fake.to(x_real.dtype), stage.level, a)))
                loss_d = losses.d_logistic_loss(real_score, fake_score)
            r1 = losses.r1_penalty(real_score, x_real) if gamma > 0 else torch.zeros((), device=self.device)
            ((loss_d + 0.5 * gamma * r1) * share).backward()
            means += torch.stack([loss_d, r1, real_score.mean(), fake_score.mean()]).detach() * share
        self._update_w_avg(w_sum, len(d.z))
        self._flag(0, means[0] + 0.5 * gamma * means[1])  # the objective E and D step on
        self._sync_grads([*m.E.parameters(), *m.D.parameters()])
        self.opt_ED.step()
        return dict(zip(("loss_d", "r1", "real_score", "fake_score"), means))

    def generator_phase(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Step II: update F and G so that D(E(G(F(z)))) calls fakes real (non-saturating)."""
        m, n = self.model, self.nets
        d, a = self._draws(stage.batch, stage, mixing=True), self._alpha(stage)
        parts = self.micro_batches(len(d.z))
        self.opt_FG.zero_grad(set_to_none=True)
        loss_g_mean, w_sum = torch.zeros((), device=self.device), 0.0
        m.E.requires_grad_(False)
        m.D.requires_grad_(False)
        try:
            for part, share in parts:
                with self._autocast():
                    ws, w = self._styles(d, part, stage.level)
                    x_fake = n.G(ws, stage.level, a, self.cfg.train.noise, d.noise_of(part))
                    fake_score = losses.wide(n.D(n.E(x_fake, stage.level, a)))
                    loss_g = losses.g_nonsaturating_loss(fake_score)
                (loss_g * share).backward()
                loss_g_mean += loss_g.detach() * share
                w_sum = w_sum + losses.wide(w.detach()).sum(0)
        finally:
            m.E.requires_grad_(True)
            m.D.requires_grad_(True)
        self._update_w_avg(w_sum, len(d.z))
        self._flag(1, loss_g_mean)
        self._sync_grads([*m.F.parameters(), *m.G.parameters()])
        self.opt_FG.step()
        return {"loss_g": loss_g_mean}

    def latent_phase(self, stage: Stage) -> dict[str, torch.Tensor]:
        """Step III: update E, G and F so that E(G(w)) returns w = F(z) (latent reciprocity).

        As in the authors' code, w feeds G with its gradient and only the loss target is detached,
        so F is updated here too (Algorithm 1 lists E and G only).
        """
        m, n = self.model, self.nets
        d, a = self._draws(stage.batch, stage, mixing=False), self._alpha(stage)
        parts = self.micro_batches(len(d.z))
        self.opt_ED.zero_grad(set_to_none=True)
        self.opt_FG.zero_grad(set_to_none=True)
        loss_lae_mean, w_sum = torch.zeros((), device=self.device), 0.0
        for part, share in parts:
            with self._autocast():
                ws, w = self._styles(d, part, stage.level)
                w_rec = n.E(n.G(ws, stage.level, a, self.cfg.train.noise, d.noise_of(part)), stage.level, a)
                loss_lae = losses.latent_reciprocity_loss(w, w_rec)
            (loss_lae * share).backward()
            loss_lae_mean += loss_lae.detach() * share
            w_sum = w_sum + losses.wide(w.detach()).sum(0)
        self._update_w_avg(w_sum, len(d.z))
        self._flag(2, loss_lae_mean)
        self._sync_grads([*m.E.parameters(), *m.F.parameters(), *m.G.parameters()])
        # The authors' optimizer steps D here with a zero gradient (torch 1.x zero_grad keeps zeros):
        # no move (beta1 = 0), but its second moment decays and its step count advances, as theirs.
        for p in m.D.parameters():
            p.grad = torch.zeros_like(p)
        self.opt_ED.step()
        self.opt_FG.step()
        return {"loss_lae": loss_lae_mean}

    def step(self, x: torch.Tensor, stage: Stage) -> dict[str, torch.Tensor]:
        """One full iteration on this worker's slice ``x`` of the global batch ``stage.batch``.

        Returns the losses as device tensors; ``check_finite`` tells whether any was NaN or inf.
        """
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
        out["rng.mixing"] = self.mixing_rng.get_state()
        out["rng.noise"] = self.noise_rng.get_state()
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

        ema = section("ema.")
        self.model.load_state_dict(section("model.") or ema)  # an inference checkpoint: from the EMA copy
        self.ema.load_state_dict(ema or section("model."))
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
            self.mixing_rng.set_state(tensors["rng.mixing"])
            if "rng.noise" in tensors:  # absent before the noise stream was shared: it starts afresh
                self.noise_rng.set_state(tensors["rng.noise"])
            torch.set_rng_state(tensors["rng.torch_cpu"])
        if self.cuda and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
        self.images_seen = int(progress["images_seen"])
        self.iteration = int(progress["iteration"])
        self.level = progress.get("level")


class AutoencoderPhases(ALAEPhases):
    """AE(ℓ2), the baseline that tells what ALAE's adversarial latent training costs or gains: the
    same E and G (F and D untouched), the same schedule, Adam settings, EMA, data and session, one
    loss, ‖x - G(E(x))‖² (mean over pixels), with the reals faded as the ALAE step fades them and no
    noise into G. The two Adams (E with D, F with G) step E and G alone: parameters without a
    gradient are skipped, and Adam is per parameter, so this is one Adam over E and G."""

    PHASES, LOSS_NAMES = ("autoencoder",), ("loss_ae",)

    def step(self, x: torch.Tensor, stage: Stage) -> dict[str, torch.Tensor]:
        self.set_stage(stage)
        m, a = self.model, stage.alpha  # the eager networks: the baseline is never compiled
        parts = self.micro_batches(len(x))
        self.opt_ED.zero_grad(set_to_none=True)
        self.opt_FG.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for part, share in parts:
            x_real = fade_reals(self._prepare(x[part]), stage.alpha)
            with self._autocast():
                y = m.decode(m.encode(x_real, stage.level, a), stage.level, a, noise=False)
            part_loss = (losses.wide(y) - x_real).pow(2).mean()
            (part_loss * share).backward()
            loss += part_loss.detach() * share
        self._flag(0, loss)
        self._sync_grads([*m.E.parameters(), *m.G.parameters()])
        self.opt_ED.step()
        self.opt_FG.step()
        self.update_ema(stage.batch)
        self.images_seen += stage.batch
        self.iteration += 1
        return {"loss_ae": loss}
