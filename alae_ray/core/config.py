"""Typed, frozen configuration with YAML presets and dotted overrides.

A preset is a YAML file under ``alae_ray/presets/`` with the sections ``model``, ``train`` and
``schedule``. Unknown keys are errors (the authors' untyped config kept a misspelled key for
years). Per-level tables are keyed by resolution (``{4: 512, 8: 256}``), never by GPU count.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it."""


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "style"  # "style" (StyleALAE, progressive) or "mlp" (permutation-invariant MNIST, §7.1).
    latent_size: int = 512  # Size of z and w; every F and D layer has this width.
    mapping_layers: int = 8  # Depth of F.
    d_layers: int = 3  # Depth of D.
    channels: int = 3  # Image channels.
    max_resolution: int = 1024  # Final resolution (a power of two >= 4).
    start_channels: int = 16  # Feature maps at max_resolution; doubled per level down to max_channels.
    max_channels: int = 512  # Cap on feature maps at low resolutions.
    mapping_lrmul: float = 0.1  # Learning-rate multiplier of F (authors' 0.1; StyleGAN's was 0.01).
    d_lrmul: float = 0.1  # Learning-rate multiplier of D (authors' value).
    pixel_min: float = -1.0  # Value of a black pixel in the networks' image space
    pixel_max: float = 1.0  # ... and of a white one (the authors' MNIST model uses [0, 1]).
    mlp_input: int = 784  # MLP variant: flattened input size.
    mlp_hidden: int = 1024  # MLP variant: width of the two hidden layers of E and G.

    @property
    def num_levels(self) -> int:
        return 1 if self.kind == "mlp" else self.max_resolution.bit_length() - 2  # 4 -> 1, 1024 -> 9

    def resolution(self, level: int) -> int:
        return 4 * 2**level

    def level_of(self, resolution: int) -> int:
        return resolution.bit_length() - 3

    def feature_maps(self, level: int) -> int:
        """Channels of G's block and E's input at ``level`` (level -1: E's output below 4x4)."""
        return min(self.max_channels, self.start_channels * 2 ** (self.num_levels - 1 - level))

    def style_layers(self, level: int) -> int:
        """Style inputs of G up to ``level``: two per resolution (one for the MLP)."""
        return 1 if self.kind == "mlp" else 2 * (level + 1)


@dataclass(frozen=True)
class TrainConfig:
    r1_gamma: float = 10.0  # Weight of the R1 penalty on reals (the loss uses gamma / 2).
    r1_interval: int = 1  # Lazy R1: every this-many iterations, gamma scaled by it (authors: every one).
    batch_gpu: int = 0  # Per-worker micro-batch, gradients accumulated over the rest (0: all at once).
    adam_beta1: float = 0.0  # Adam beta1 (paper: 0).
    adam_beta2: float = 0.99  # Adam beta2 (paper: 0.99).
    style_mixing_prob: float = 0.9  # Probability of mixing two w at a random crossover layer.
    ema_kimg: float = 10.0  # Half-life of the EMA copy of the networks, in thousands of images.
    w_avg_beta: float = 0.995  # Running average of w used by truncation.
    truncation_psi: float = 0.7  # Truncation for samples (1 = none).
    truncation_cutoff: int = 8  # Truncate only the first this-many style layers.
    noise: bool = True  # Per-pixel noise inputs of G.
    seed: int = 0  # Seed of every random stream (z, noise, data order, init).
    # CUDA only (ignored on the CPU); the style presets turn the first two on (BENCHMARKS.md).
    mixed_precision: bool = False  # bf16 autocast; scores, losses and R1 stay float32.
    channels_last: bool = False  # channels_last memory format.
    fused_adam: bool = True  # Fused Adam kernel.
    tf32: bool = True  # TF32 matrix products and convolutions where float32 remains.
    compile: bool = False  # torch.compile F, G, E, D (recompiled per level; R1's pass stays eager).
    cpu_autocast: bool = False  # mixed_precision on the CPU too: the GPU default's numerics, checked here (slow).


@dataclass(frozen=True)
class ScheduleConfig:
    start_resolution: int = 4  # Resolution of the first level.
    fade_kimg: float = 500.0  # Images (thousands) blending a new level in.
    stable_kimg: float = 500.0  # Images (thousands) at full strength per level.
    final_kimg: float = 1000.0  # Extra images (thousands) at the top level.
    fade: str = "sine"  # Fade-in ramp: "sine" (smooth, authors') or "linear".
    batch: Mapping[int, int] = field(default_factory=lambda: {4: 128})  # Global batch per resolution.
    lr: Mapping[int, float] = field(default_factory=lambda: {4: 0.002})  # Learning rate per resolution.

    def table(self, name: str, resolution: int):
        """Value of a per-resolution table, carried over from the nearest lower resolution."""
        tab = getattr(self, name)
        keys = [r for r in sorted(tab) if r <= resolution]
        if not keys:
            raise ConfigError(f"schedule.{name} has no entry at or below resolution {resolution}")
        return tab[keys[-1]]


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (collections.abc.Mapping, dict) or tp in (Mapping, dict):
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{4: 128, 8: 64}}, got {value!r}")
        return {_coerce(k, kt, f"{where} key"): _coerce(v, vt, f"{where}[{k}]") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls, data: Mapping[str, Any], where: str):
    """``cls(**data)`` with each value coerced to its field's type; ConfigError naming ``where.key``
    for an unknown key or a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + '.' + k if where else k for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    m, s, t = cfg.model, cfg.schedule, cfg.train
    if m.kind not in ("style", "mlp"):
        raise ConfigError(f"model.kind must be 'style' or 'mlp', got {m.kind!r}")
    for name in ("max_resolution", "start_resolution"):
        r = getattr(m if name == "max_resolution" else s, name)
        if r < 4 or r & (r - 1):
            raise ConfigError(f"{name} must be a power of two >= 4, got {r}")
    if m.kind == "style" and s.start_resolution > m.max_resolution:
        raise ConfigError(f"schedule.start_resolution {s.start_resolution} exceeds model.max_resolution {m.max_resolution}")
    if s.fade not in ("sine", "linear"):
        raise ConfigError(f"schedule.fade must be 'sine' or 'linear', got {s.fade!r}")
    for name in ("batch", "lr"):
        for r, v in getattr(s, name).items():
            if r < 4 or r & (r - 1):
                raise ConfigError(f"schedule.{name}: key {r} is not a resolution (power of two >= 4)")
            if v <= 0:
                raise ConfigError(f"schedule.{name}[{r}] must be positive, got {v}")
        s.table(name, s.start_resolution)  # a value must exist for the first level
    if min(s.fade_kimg, s.stable_kimg, s.final_kimg) < 0:
        raise ConfigError("schedule.fade_kimg, stable_kimg and final_kimg must be >= 0")
    if not m.pixel_min < m.pixel_max:
        raise ConfigError(f"model.pixel_min ({m.pixel_min}) must be below model.pixel_max ({m.pixel_max})")
    if m.latent_size < 1 or m.mapping_layers < 1 or m.d_layers < 1:
        raise ConfigError("model.latent_size, mapping_layers and d_layers must be >= 1")
    if not 0 <= t.style_mixing_prob <= 1:
        raise ConfigError(f"train.style_mixing_prob must be in [0, 1], got {t.style_mixing_prob}")
    if t.r1_gamma < 0 or t.ema_kimg < 0:
        raise ConfigError("train.r1_gamma and train.ema_kimg must be >= 0")
    if t.r1_interval < 1 or t.batch_gpu < 0:
        raise ConfigError(f"train.r1_interval must be >= 1 (got {t.r1_interval}) and train.batch_gpu >= 0 "
                          f"(got {t.batch_gpu})")
    if t.seed < 0:  # it seeds NumPy's streams (the data order) as well as torch's
        raise ConfigError(f"train.seed must be >= 0, got {t.seed}")
    return cfg


def from_dict(data: Mapping[str, Any]) -> Config:
    return validate(build_dataclass(Config, data, ""))


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data[a][b] = value`` for the override key ``a.b`` (tables merge)."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    leaf = parts[-1]
    if isinstance(node.get(leaf), dict) and isinstance(value, dict):
        node[leaf] = {**node[leaf], **value}  # table overrides merge: schedule.batch={64: 16}
    else:
        node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.r1_gamma=5"`` -> ``("train.r1_gamma", 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.r1_gamma=5")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset_dict(name_or_path: str | Path) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset {str(name_or_path)!r}; available: {', '.join(preset_names())}")
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping")
    data.setdefault("name", path.stem)
    return data


def load_config(preset: str | Path | Config = "tiny", overrides: list[str] | Mapping[str, Any] = ()) -> Config:
    """Load a preset (name, YAML path or a Config) and apply dotted overrides (``key=value`` strings or a dict)."""
    data = preset.to_dict() if isinstance(preset, Config) else load_preset_dict(preset)
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(data, key, value)
    return from_dict(data)


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
