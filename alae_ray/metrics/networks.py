"""The two pretrained feature networks of the metrics: FID's Inception-v3 and LPIPS-VGG16.

Weights are resolved in this order:

1. an explicit local file (``weights=`` argument, CLI ``--inception-weights`` / ``--vgg-weights`` /
   ``--lpips-weights``, or the environment variables ``ALAE_RAY_INCEPTION_WEIGHTS``,
   ``ALAE_RAY_VGG_WEIGHTS``, ``ALAE_RAY_LPIPS_WEIGHTS``);
2. torch.hub's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (the normal download location);
3. a download from the publishers' URLs into that cache (needs internet once).

Inception-v3 is pytorch-fid's port of the TensorFlow FID network (``pt_inception-2015-12-05-6726825d.pth``),
returning the 2048-D pool3 features. LPIPS is Zhang et al.'s v0.1 "vgg" metric: torchvision's VGG16
features, five ReLU stages, unit-normalised channels, learned non-negative 1x1 weights, spatial mean.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_FILE = "lpips_vgg_v0.1.pth"
ENV_INCEPTION = "ALAE_RAY_INCEPTION_WEIGHTS"
ENV_VGG = "ALAE_RAY_VGG_WEIGHTS"
ENV_LPIPS = "ALAE_RAY_LPIPS_WEIGHTS"

# VGG16 ``features`` indices ending the five LPIPS stages (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
LPIPS_STAGE_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def _local(path: str | os.PathLike | None, env: str) -> Path | None:
    source = "argument" if path else f"${env}"
    path = path or os.environ.get(env) or None
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} (from {source}) does not exist")
    return path


def _torch_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def state_fingerprint(module: nn.Module) -> str:
    """A short hash of a network's weights: cached statistics are only reused with the same network."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items())[:8]:
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes()[:1 << 16])
    return h.hexdigest()[:12]


# --- Inception (FID) -----------------------------------------------------------------------------


@contextlib.contextmanager
def _pytorch_fid_weights_from(path: Path):
    # pytorch-fid always fetches FID_WEIGHTS_URL through its module-level load_state_dict_from_url;
    # we swap that one function for the duration of the constructor to load our resolved file.
    import pytorch_fid.inception as mod

    original = mod.load_state_dict_from_url
    mod.load_state_dict_from_url = lambda url, **kw: _torch_load(path)
    try:
        yield
    finally:
        mod.load_state_dict_from_url = original


def load_inception(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None) -> nn.Module:
    """pytorch-fid's InceptionV3 returning pool3 (2048-D), eval mode, on ``device``."""
    from pytorch_fid.inception import InceptionV3

    path = Path(resolve_weight_file("inception", weights))
    block = InceptionV3.BLOCK_INDEX_BY_DIM[2048]
    with _pytorch_fid_weights_from(path):
        net = InceptionV3([block], resize_input=True, normalize_input=True, use_fid_inception=True)
    return net.to(device).eval().requires_grad_(False)


def to_inception_range(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, 3, H, W] in [0, 1]; grey images are repeated to RGB."""
    x = images.float().clamp(-1, 1).add(1).div(2)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """pool3 features [N, 2048] of images in [-1, 1] (resized to 299 by the network)."""
    device = next(net.parameters()).device
    return net(to_inception_range(images).to(device))[0].flatten(1).double().cpu()


# --- LPIPS ---------------------------------------------------------------------------------------


def _vgg16_features_state(weights: str | os.PathLike | None) -> dict:
    state = _torch_load(Path(resolve_weight_file("vgg", weights)))
    # A full torchvision VGG16 state dict, or only its ``features.*`` part (all LPIPS needs).
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def _lpips_linear_state(weights: str | os.PathLike | None) -> dict:
    return _torch_load(Path(resolve_weight_file("lpips", weights)))


class LPIPS(nn.Module):
    """LPIPS v0.1 (VGG16): d(x, y) = Σ_l mean_hw ‖w_l ⊙ (x̂_l - ŷ_l)‖², x̂_l channel-unit-normalised.

    Inputs are images in [-1, 1], [N, 3 or 1, H, W]. Images smaller than ``min_size`` are bilinearly
    upsampled first, so that the fifth VGG stage (1/16 resolution) still has spatial extent.
    """

    def __init__(self, features: nn.Sequential, linear: list[torch.Tensor], min_size: int = 64):
        super().__init__()
        self.stages = nn.ModuleList(features[a:b] for a, b in zip((0, *LPIPS_STAGE_ENDS[:-1]), LPIPS_STAGE_ENDS))
        for i, w in enumerate(linear):
            if w.min() < 0:
                raise ValueError(f"LPIPS linear weights of layer {i} are negative; expected non-negative")
            self.register_buffer(f"lin{i}", w.reshape(1, -1, 1, 1).float())
        # Zhang et al.'s ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.min_size = min_size

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < self.min_size:
            scale = self.min_size / min(x.shape[-2:])
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances [N]."""
        hx, hy = self._prepare(x), self._prepare(y)
        total = torch.zeros(x.shape[0], device=hx.device)
        for i, stage in enumerate(self.stages):
            hx, hy = stage(hx), stage(hy)
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((nx - ny).pow(2) * getattr(self, f"lin{i}")).sum(1).mean((1, 2))
        return total


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` layout (same indices, same state-dict keys), without
    allocating the 123 M-parameter classifier that LPIPS never uses."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    return nn.Sequential(*layers)


def load_lpips(device: str | torch.device = "cpu", vgg_weights: str | os.PathLike | None = None,
               lpips_weights: str | os.PathLike | None = None) -> LPIPS:
    features = vgg16_features()
    features.load_state_dict(_vgg16_features_state(vgg_weights))
    lin_state = _lpips_linear_state(lpips_weights)
    linear = [lin_state[f"lin{i}.model.1.weight"] for i in range(len(LPIPS_STAGE_ENDS))]
    return LPIPS(features, linear).to(device).eval().requires_grad_(False)


def _shipped_lpips_weights() -> Path | None:
    try:  # the ``lpips`` package ships the v0.1 weights inside its wheel
        from importlib.resources import files

        shipped = files("lpips").joinpath("weights/v0.1/vgg.pth")
        return Path(str(shipped)) if shipped.is_file() else None
    except ModuleNotFoundError:
        return None


class WeightsUnavailable(FileNotFoundError):
    """A pretrained network's weights are neither given, nor cached, nor downloadable (one line)."""


_WHAT = {"inception": ("FID's Inception-v3", ENV_INCEPTION, "--inception-weights"),
         "vgg": ("LPIPS's VGG16", ENV_VGG, "--vgg-weights"),
         "lpips": ("LPIPS's linear layers", ENV_LPIPS, "--lpips-weights")}


def _weight_file(kind: str) -> tuple[str, Path]:
    """(where ``kind``'s weights are downloaded from, where torch.hub's cache keeps them)."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    url, name = {"inception": (FID_WEIGHTS_URL, INCEPTION_FILE), "vgg": (VGG16_URL, VGG16_FILE),
                 "lpips": (LPIPS_URL, LPIPS_FILE)}[kind]
    return url, Path(torch.hub.get_dir()) / "checkpoints" / name


def find_weight_file(kind: str, explicit: str | os.PathLike | None = None) -> str | None:
    """The local file ``resolve_weight_file`` would use, or None where it would have to download."""
    _, env, _ = _WHAT[kind]
    local = _local(explicit, env) or (_shipped_lpips_weights() if kind == "lpips" else None)
    if local is not None:
        return str(local)
    path = _weight_file(kind)[1]
    return str(path) if path.is_file() else None


def resolve_weight_file(kind: str, explicit: str | os.PathLike | None = None) -> str:
    """A concrete local file for ``kind`` in {"inception", "vgg", "lpips"}, in the module's order,
    downloading into torch.hub's cache if needed (``WeightsUnavailable`` naming the file, where it
    was looked for and how to get it, when that fails). Used before starting Ray workers, so that
    every worker loads exactly the driver's file."""
    found = find_weight_file(kind, explicit)
    if found is not None:
        return found
    url, path = _weight_file(kind)
    name = path.name
    what, env, option = _WHAT[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch.hub downloads to a temporary name and renames: no half-written file is left
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except OSError as exc:  # URLError and socket errors are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailable(f"{what} weights {name} are not in {path.parent} and could not be downloaded "
                                 f"from {url} ({reason}); download that file where there is internet and copy "
                                 f"it there, or pass {option} FILE (or set ${env})") from None
    return str(path)
