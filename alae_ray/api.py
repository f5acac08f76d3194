"""The Python API: one path from weights to pixels, for notebooks, evaluation and serving.

    import alae_ray
    model = alae_ray.load("runs/tiny")                  # a checkpoint, a run directory or s3://...
    w = model.encode(images)                            # [N, L]
    x = model.decode(w)                                 # images
    x = model.reconstruct(images)                       # G(E(x))
    x = model.generate(seed=[1, 2, 3], psi=0.7)         # G(F(z)), truncated
    w = model.map(z)                                    # F(z)
    x = model.mix(w_src, w_dst, "coarse")               # styles of a band from w_src, the rest from w_dst
    x = model.edit(w, 0, [-3, 0, 3])                     # along the strongest edit direction (SeFa)
    w, x = model.refine(images, steps=100)               # a sharper reconstruction, by optimising w
    model.to_pil(x)[0]                                  # look at it

Image conventions. Returned images are float32 tensors [N, C, R, R] in [-1, 1] on the model's
device (``to_uint8`` / ``to_pil`` convert; ``(x + 1) / 2`` is what torchvision's ``save_image``
wants). Inputs may be such tensors (already R x R), uint8 arrays [N, H, W, C], [H, W, C], [H, W]
or [N, H, W] (NumPy or torch; C is 1, 3 or 4), PIL images, image file paths, or lists of those;
uint8 and PIL images of another size are resized (Lanczos) to R x R and converted to the model's
channels. The MLP (MNIST) model takes and returns [N, 1, 28, 28] images like the others.

Noise. ``noise=True`` (the authors' demos) adds G's per-pixel noise drawn from a generator seeded
with ``noise_seed`` (``None``: fresh noise). ``decode``, ``reconstruct`` and ``mix`` use one set of
noise images for the whole call, so an input always gives the same output whatever it is batched
with; ``generate(seed=...)`` draws each image's z and noise from its own seed, ``generate(z=...)``
one noise image per z from ``noise_seed``. ``noise=False`` is the authors' noise-off mode: a fixed
function of the activations, not zero noise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .core.bands import BANDS, band_layers
from .core.checkpoint import CheckpointError, load_model
from .core.config import Config, ModelConfig
from .core.model import ALAE, mix_styles
from .core.pixels import from_uint8, signed, to_uint8

MAX_FORWARD = 64  # images per forward pass: bounds activation memory at large resolutions
MAX_REFINE_STEPS = 1000  # refinement is an optimisation per request: bounded


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU. Asking for CUDA without it is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available on this machine")
    return device


@contextmanager
def local_checkpoint(uri: str) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``uri``; an ``s3://`` one is downloaded first."""
    if not str(uri).startswith("s3://"):
        yield Path(uri)
        return
    import pyarrow.fs as pafs

    from .data.storage import DatasetError, resolve

    tmp = tempfile.mkdtemp(prefix="alae-ckpt-")
    try:
        try:
            loc = resolve(str(uri).rstrip("/"))
            pafs.copy_files(loc.path, tmp, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
        except (OSError, DatasetError) as exc:
            raise CheckpointError(f"checkpoint {uri!r}: cannot download: {exc}".replace("\n", " ")) from None
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(checkpoint: str | os.PathLike, *, device: str | torch.device = "auto", level: int | None = None,
         ema: bool = True) -> "Model":
    """An inference model from a checkpoint directory, a run directory (its newest checkpoint) or an
    ``s3://`` URI of either. ``level`` defaults to the top level; ``ema=False`` loads the raw
    training networks instead of their moving average."""
    from .infra.checkpoints import locate_checkpoint

    dev = pick_device(device)
    uri = locate_checkpoint(str(checkpoint))  # of an s3:// run directory, only the newest is downloaded
    with local_checkpoint(uri) as path:
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {uri!r} not found")
        try:
            network, cfg, progress = load_model(path, ema=ema, device=dev)
        except CheckpointError as exc:  # name what the user gave, not a temporary download
            raise CheckpointError(str(exc).replace(str(path), uri)) from None
    return Model(network, cfg, progress, level=level, name=uri)


class Model:
    """An ALAE ready for inference at one level (default: the top); every method is batched."""

    def __init__(self, network: ALAE, cfg: Config, progress: dict | None = None, *, level: int | None = None,
                 name: str = "model"):
        m = cfg.model
        top = m.num_levels - 1
        self.level = top if level is None else int(level)
        if not 0 <= self.level <= top:
            raise ValueError(f"{name}: level {self.level} is outside the model's levels 0..{top}")
        self.network = network.eval().requires_grad_(False)
        self.cfg, self.progress, self.name = cfg, dict(progress or {}), name
        self.device = next(network.parameters()).device
        self.mlp = m.kind == "mlp"
        self.channels = m.channels
        self.resolution = int(round((m.mlp_input / m.channels) ** 0.5)) if self.mlp else m.resolution(self.level)
        self.latent_size = m.latent_size
        self.style_layers = m.style_layers(self.level)
        self.num_levels = self.level + 1

    def __repr__(self) -> str:
        return (f"<alae_ray.Model {self.name}: {self.cfg.name}, {self.resolution}x{self.resolution}, "
                f"latent {self.latent_size}, {self.device}>")

    # --- images in and out ---------------------------------------------------------------------

    def images(self, images) -> torch.Tensor:
        """Any accepted image form -> float [N, C, R, R] in [-1, 1] on the model's device."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images if images.dim() == 4 else images[None]
        else:
            x = torch.from_numpy(_uint8_batch(images, self.resolution, self.channels).copy())  # PIL's are read-only
            x = signed(x.to(self.device).permute(0, 3, 1, 2))  # uint8 crosses to the device: a quarter of the bytes
        if x.shape[1] != self.channels or x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(f"{self.name}: images must be [N, {self.channels}, {self.resolution}, "
                             f"{self.resolution}] here, got {tuple(x.shape)}")
        return x.to(self.device)

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the networks' pixel range and layout."""
        x = from_uint8((x + 1.0) * 127.5, self.cfg.model) if self.mlp else x
        return x.flatten(1) if self.mlp else x

    def _from_net(self, y: torch.Tensor) -> torch.Tensor:
        if not self.mlp:
            return y.float()
        m = self.cfg.model
        y = y.float().view(len(y), self.channels, self.resolution, self.resolution)
        return (y - m.pixel_min) * (2.0 / (m.pixel_max - m.pixel_min)) - 1.0

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """[-1, 1] images [N, C, R, R] -> uint8 NumPy [N, R, R, C]."""
        return to_uint8(x.detach(), ModelConfig()).permute(0, 2, 3, 1).cpu().numpy()  # default range: [-1, 1]

    def to_pil(self, x: torch.Tensor) -> list:
        from PIL import Image

        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in self.to_uint8(x)]

    # --- noise ---------------------------------------------------------------------------------

    def _noise_images(self, seeds: Sequence[int] | None, noise_seed: int | None, per_image: int = 0) -> list | None:
        """G's noise inputs (two per block): per seed, ``per_image`` images from ``noise_seed``, one set
        shared by the batch, or None (fresh noise from the global RNG)."""
        if self.mlp or (seeds is None and noise_seed is None):
            return None
        if seeds is None:
            g = torch.Generator().manual_seed(int(noise_seed))
            return self.network.noise_images(self.level, max(per_image, 1), g)
        # each seed's generator continues after drawing that image's z
        per = [self.network.noise_images(self.level, 1, _after_z(int(s), self.latent_size)) for s in seeds]
        return [torch.cat(images) for images in zip(*per)]

    # --- the maps ------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, images) -> torch.Tensor:
        """E(x): w [N, L] (float32, on the model's device)."""
        x = self.images(images)
        return torch.cat([self.network.encode(self._to_net(x[s]), self.level).float() for s in _chunks(len(x))])

    @torch.inference_mode()
    def decode(self, w, *, noise: bool = True, noise_seed: int | None = 0) -> torch.Tensor:
        """G(w) for w [N, L] (or [L]) or per-style-input codes [N, S, L]."""
        w = torch.as_tensor(w, dtype=torch.float32).to(self.device)
        w = w[None] if w.dim() == 1 else w
        out = []
        for s in _chunks(len(w)):
            imgs = self._noise_images(None, noise_seed) if noise else None
            out.append(self._from_net(self.network.decode(w[s], self.level, 1.0, noise, imgs)))
        return torch.cat(out)

    @torch.inference_mode()
    def reconstruct(self, images, *, noise: bool = True, noise_seed: int | None = 0) -> torch.Tensor:
        """G(E(x)): images in, reconstructions out."""
        return self.decode(self.encode(images), noise=noise, noise_seed=noise_seed)

    @torch.inference_mode()
    def map(self, z) -> torch.Tensor:
        """F(z): w [N, L] for z [N, L] (or [L])."""
        z = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        return self.network.map(z[None] if z.dim() == 1 else z)

    def latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """z [N, L]: one CPU generator per seed, so a seed gives the same z on every device."""
        return torch.stack([_after_z(int(s), self.latent_size, keep=True) for s in seeds]).to(self.device)

    @torch.inference_mode()
    def styles(self, *, seed=None, z=None, psi: float | Sequence[float] | None = None,
               cutoff: int | None = None) -> torch.Tensor:
        """Truncated per-style-input codes [N, S, L] for seeds or z (psi: one value or one per image)."""
        if (seed is None) == (z is None):
            raise ValueError("give exactly one of seed (an int or a list of ints) or z")
        z = self.latents(np.atleast_1d(seed).tolist()) if seed is not None else torch.as_tensor(z, dtype=torch.float32)
        z = z.to(self.device)
        z = z[None] if z.dim() == 1 else z
        t = self.cfg.train
        psi = t.truncation_psi if psi is None else psi
        cutoff = (t.truncation_cutoff if cutoff is None else cutoff) if not self.mlp else None
        ws = self.network.broadcast(self.network.map(z), self.level)
        psi = torch.as_tensor(np.broadcast_to(np.asarray(psi, np.float32), (len(z),)).copy(), device=self.device)
        return self.network.truncate(ws, psi, cutoff)

    @torch.inference_mode()
    def generate(self, seed=None, *, z=None, psi: float | Sequence[float] | None = None, cutoff: int | None = None,
                 noise: bool = True, noise_seed: int | None = 0) -> torch.Tensor:
        """G(truncate(F(z))) for seeds (each seed fixes z and the image's noise) or given z.

        psi defaults to the model's truncation (``train.truncation_psi``, first ``truncation_cutoff``
        style inputs); psi=1 is no truncation.
        """
        ws = self.styles(seed=seed, z=z, psi=psi, cutoff=cutoff)
        seeds = np.atleast_1d(seed).tolist() if seed is not None else None
        out = []
        for s in _chunks(len(ws)):
            imgs = None
            if noise and not self.mlp:
                chunk_seed = None if noise_seed is None else noise_seed + s.start  # chunks draw different noise
                imgs = self._noise_images(seeds[s] if seeds else None, chunk_seed, per_image=len(ws[s]))
            out.append(self._from_net(self.network.decode(ws[s], self.level, 1.0, noise, imgs)))
        return torch.cat(out)

    def band(self, name: str) -> range:
        """Style inputs of a band: ``coarse``, ``middle`` or ``fine`` (see ``alae_ray.core.bands``)."""
        if name not in BANDS:
            raise ValueError(f"unknown band {name!r}; use one of {', '.join(BANDS)} or a range")
        return band_layers(self.num_levels)[name]

    @torch.inference_mode()
    def mix(self, w_src, w_dst, layers: str | range = "coarse", *, noise: bool = True,
            noise_seed: int | None = 0) -> torch.Tensor:
        """Images from w_dst [N, L] with the style inputs in ``layers`` (a band name or a range) taken
        from w_src [N, L] (the paper's Figure 9); images are accepted too and encoded first."""
        layers = self.band(layers) if isinstance(layers, str) else layers
        src, dst = (self._code(v) for v in (w_src, w_dst))
        if len(src) != len(dst):
            raise ValueError(f"mix needs as many sources as destinations, got {len(src)} and {len(dst)}")
        return self.decode(mix_styles(self.network.broadcast(dst, self.level), src, layers), noise=noise,
                           noise_seed=noise_seed)

    def _code(self, v) -> torch.Tensor:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() <= 2:
            return (v[None] if v.dim() == 1 else v).float().to(self.device)
        return self.encode(v)

    # --- beyond the authors: edit directions and sharper reconstructions -----------------------

    @torch.no_grad()
    def directions(self, k: int = 10) -> torch.Tensor:
        """The ``k`` strongest unsupervised edit directions in W [k, L], unit length (SeFa, Shen & Zhou
        2021: the top eigenvectors of AᵀA, A = G's style-affine weights stacked over every style
        input up to this level). Computed once per model."""
        if self.mlp:
            raise ValueError(f"{self.name}: edit directions need a StyleALAE (G's style affines)")
        if getattr(self, "_directions", None) is None:
            weights = []
            for block in self.network.G.blocks[:self.level + 1]:
                for style in (block.style_1, block.style_2):
                    w = style.weight * style.coef  # effective [2C, L]
                    weights.append(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))  # each output alike
            a = torch.cat(weights).double().cpu()
            eigenvalues, eigenvectors = torch.linalg.eigh(a.T @ a)  # ascending
            self._directions = eigenvectors.flip(1).T.float()  # [L, L], strongest first
        return self._directions[:k].to(self.device)

    @torch.inference_mode()
    def edit(self, w, direction: int | torch.Tensor, strength: float | Sequence[float], *,
             layers: str | range | None = None, noise: bool = True, noise_seed: int | None = 0) -> torch.Tensor:
        """Images of w moved by ``strength`` along a direction (an index into ``directions()`` or a
        vector [L]) at the style inputs in ``layers`` (a band name or range; default: all). A list of
        strengths gives one image per strength for each w: [N * len(strengths), C, R, R]."""
        w = self._code(w)
        d = self.directions(int(direction) + 1)[int(direction)] if isinstance(direction, int) else \
            torch.as_tensor(direction, dtype=torch.float32, device=self.device)
        layers = self.band(layers) if isinstance(layers, str) else (layers or range(0, self.style_layers))
        strengths = torch.as_tensor(np.atleast_1d(strength), dtype=torch.float32, device=self.device)
        ws = self.network.broadcast(w, self.level).repeat_interleave(len(strengths), 0).clone()  # [N k, S, L]
        shift = strengths.repeat(len(w))[:, None] * d[None]  # [N k, L]
        ws[:, layers.start:layers.stop] += shift[:, None]
        return self.decode(ws, noise=noise, noise_seed=noise_seed)

    def judge_shapes(self, n: int = 256, seed: int = 0):
        """How well this model's reconstructions keep the factors of ``n`` held-out procedural shapes
        (position, hue, scale, rotation, shape class), beside the blind guess: a
        ``alae_ray.judges.shapes.ShapesJudgement`` (``.table()``, ``.summary()``, ``.to_dict()``)."""
        from .judges.shapes import judge, network_reconstructor

        if self.mlp:
            raise ValueError(f"{self.name}: the shapes judge needs a StyleALAE on RGB images, not an MLP ALAE")
        return judge(network_reconstructor(self.network, self.level), self.resolution, n=n, seed=seed)

    def judge_digits(self, mnist: str | os.PathLike, n: int = 2000, seed: int = 0, cache: str | None = None):
        """How well this model's reconstructions and generations are digits, by a small classifier
        trained on the real MNIST digits in ``mnist`` (a folder of IDX files; trained once, then
        cached): a ``alae_ray.judges.digits.DigitsJudgement`` (``.table()``, ``.summary()``)."""
        from .judges.digits import judge_network

        return judge_network(self.network, self.level, mnist, n=n, seed=seed, cache=cache)

    def refine(self, images, *, steps: int = 100, lr: float = 0.01, per_layer: bool = False, lpips=None,
               lpips_weight: float = 1.0, noise_seed: int = 0, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A sharper reconstruction: start from w = E(x) and optimise it for ``steps`` Adam steps
        against the input (mean squared pixel error, plus ``lpips_weight`` x LPIPS when an LPIPS
        network ``lpips(a, b) -> [N]`` is given). ``per_layer`` optimises one w per style input.
        Returns (refined codes [N, L] or [N, S, L], refined images); ``progress(step, loss)`` is
        called as it goes. The encoder's result is ``reconstruct(images)``."""
        if not 0 <= steps <= MAX_REFINE_STEPS:
            raise ValueError(f"refine steps must be between 0 and {MAX_REFINE_STEPS}, got {steps}")
        x = self.images(images)
        w0 = self.encode(x)
        w = (self.network.broadcast(w0, self.level) if per_layer else w0).clone().requires_grad_(True)
        noise = self._noise_images(None, noise_seed) if not self.mlp else None
        opt = torch.optim.Adam([w], lr=lr)
        target = self._to_net(x)
        for step in range(steps):
            with torch.enable_grad():
                y = self.network.decode(w, self.level, 1.0, True, noise)
                loss = (y - target).pow(2).mean()
                if lpips is not None:
                    loss = loss + lpips_weight * lpips(self._from_net(y), x).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(step + 1, loss.item())
        w = w.detach()
        return w, self.decode(w, noise_seed=noise_seed)


def _after_z(seed: int, latent_size: int, keep: bool = False):
    """z for ``seed`` (keep=True), or the generator just after drawing it (for that image's noise)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(latent_size, generator=g)
    return z if keep else g


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + MAX_FORWARD, n)) for i in range(0, n, MAX_FORWARD)]


def _uint8_batch(images, resolution: int, channels: int) -> np.ndarray:
    """PIL images / uint8 arrays ([R, R, C], [N, R, R, C] or lists) -> uint8 [N, R, R, channels]."""
    from PIL import Image

    if isinstance(images, (list, tuple)):
        return np.concatenate([_uint8_batch(im, resolution, channels) for im in images]) if images else \
            np.zeros((0, resolution, resolution, channels), np.uint8)
    if isinstance(images, (str, os.PathLike)):
        with Image.open(images) as im:
            return _uint8_batch(im.copy(), resolution, channels)
    if isinstance(images, Image.Image):
        im = images.convert("L" if channels == 1 else "RGB")
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.LANCZOS)
        a = np.asarray(im, dtype=np.uint8)
        return (a[..., None] if a.ndim == 2 else a)[None]
    a = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 [N, R, R, C] or [R, R, C] (float images: a torch "
                         f"tensor [N, C, R, R] in [-1, 1]), got {a.dtype}")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        a = a[..., None]  # a grey image [H, W], or a batch of them [N, H, W]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image arrays must be [N, R, R, C] or [R, R, C] with C in 1, 3, 4, got {a.shape}")
    if a.shape[1:3] != (resolution, resolution) or a.shape[-1] != channels:
        return np.concatenate([_uint8_batch(Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x), resolution,
                                            channels) for x in a])
    return np.ascontiguousarray(a)
