"""The ALAE authors' checkpoints and configs (podgorskiy/ALAE), read without executing their code.

Their ``.pth`` files are torch pickles ``{"models": {...}, "auxiliary": {...}}`` written by their
Checkpointer. ``models`` holds state dicts of E (``discriminator``), G (``generator``), D
(``mapping_tl``), F (``mapping_fl``), the running average of w (``dlatent_avg``) and the EMA copies
(``*_s``). Their layers store *effective* weights (equalized lr lives in their optimizer); ours store
``effective / coef`` and scale at run time, so import divides by each layer's ``coef``.

Everything here is pure PyTorch; downloads of their released files live in ``alae_ray.releases``.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from .config import Config, ConfigError, ModelConfig, ScheduleConfig, TrainConfig, validate
from .model import ALAE

NETWORKS = {"E": "discriminator", "G": "generator", "D": "mapping_tl", "F": "mapping_fl"}
BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


class AuthorsFormatError(ValueError):
    """A file is not an authors' checkpoint, or does not fit the configuration; the message says why."""


class _RunningMeanStub:
    """Stands in for their ``tracker.RunningMeanTorch`` (loss history), the one class their files pickle."""


def load_pth(path: str | Path) -> dict:
    """The authors' checkpoint as nested dicts of tensors, loaded with ``weights_only=True``.

    The allow-list holds one name, their loss tracker's class, mapped to an empty stand-in: nothing
    in the file can run code, and a file that tries is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise AuthorsFormatError(f"{str(path)!r} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals([(_RunningMeanStub, "tracker.RunningMeanTorch")]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.IGNORECASE)
        if found:
            raise AuthorsFormatError(f"{str(path)!r} refused: loading it would call {found.group(1)}, which is "
                                     f"not a tensor type (an authors' checkpoint holds only tensors)") from None
        raise AuthorsFormatError(f"{str(path)!r} is not a readable torch checkpoint ({_first_line(text)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError) as exc:
        raise AuthorsFormatError(f"{str(path)!r} is not a readable torch checkpoint; truncated or corrupt? "
                                 f"({type(exc).__name__}: {_first_line(str(exc))})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
        raise AuthorsFormatError(f"{str(path)!r} is a torch file but not an ALAE authors' checkpoint "
                                 f"(no 'models' dictionary at the top level)")
    return data


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


# --- key mapping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    ours: str  # key in ALAE.state_dict(), e.g. "G.blocks.5.conv_1.weight"
    theirs: str  # key in the authors' network, e.g. "decode_block.5.conv_1.weight"
    network: str  # "generator", "discriminator", "mapping_tl", "mapping_fl" or "dlatent_avg"
    transposed: bool = False  # their fused transposed conv: [in, out, 3, 3], flipped


def _their_e_index(level: int, cfg: ModelConfig) -> int:
    return cfg.num_levels - 1 - level  # their encoder counts blocks from the top resolution down


def key_pairs(cfg: ModelConfig) -> list[KeyPair]:
    """Every tensor of our StyleALAE with the authors' name for it, for configuration ``cfg``."""
    if cfg.kind != "style":
        raise AuthorsFormatError("the authors released StyleALAE checkpoints only; model.kind must be 'style'")
    pairs = []
    for ours in ALAE(cfg).state_dict():
        net, rest = ours.split(".", 1) if "." in ours else (ours, "")
        if ours == "w_avg":
            pairs.append(KeyPair(ours, "buff", "dlatent_avg"))
        elif net == "F":
            i, leaf = re.fullmatch(r"map_blocks\.(\d+)\.(\w+)", rest).groups()
            pairs.append(KeyPair(ours, f"map_blocks.{i}.fc.{leaf}", NETWORKS[net]))
        elif net == "D":
            pairs.append(KeyPair(ours, rest, NETWORKS[net]))
        elif net == "G":
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
            if m:
                i, leaf = int(m.group(1)), m.group(2)
                # Their decoder block i is fused (a transposed conv) when it outputs >= 128x128.
                fused = leaf == "conv_1.weight" and cfg.resolution(i) >= 128
                pairs.append(KeyPair(ours, f"decode_block.{i}.{leaf}", NETWORKS[net], transposed=fused))
            elif rest.startswith("to_rgb."):
                i, leaf = rest.split(".")[1:]
                pairs.append(KeyPair(ours, f"to_rgb.{i}.to_rgb.{leaf}", NETWORKS[net]))
            else:
                pairs.append(KeyPair(ours, rest, NETWORKS[net]))  # const
        elif net == "E":
            kind, level, leaf = re.fullmatch(r"(blocks|from_rgb)\.(\d+)\.(.+)", rest).groups()
            j = _their_e_index(int(level), cfg)
            theirs = f"encode_block.{j}.{leaf}" if kind == "blocks" else f"from_rgb.{j}.from_rgb.{leaf}"
            pairs.append(KeyPair(ours, theirs, NETWORKS[net]))
        else:
            raise AssertionError(f"unmapped key {ours}")
    return pairs


def blur_keys(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(network, key) of their fixed blur filters: constants we check and do not store."""
    return ([("generator", f"decode_block.{i}.blur.weight") for i in range(cfg.num_levels)]
            + [("discriminator", f"encode_block.{j}.blur.weight") for j in range(cfg.num_levels)])


def their_shape(pair: KeyPair, ours: torch.Size) -> tuple[int, ...]:
    """The shape the authors store for our tensor of shape ``ours``."""
    if pair.transposed:
        return (ours[1], ours[0], *ours[2:])
    return tuple(ours)


def _scales(model: ALAE) -> dict[str, float]:
    """Our key -> effective / stored for every run-time-scaled tensor (1 for plain parameters)."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "coef"):
            out[f"{name}.weight"] = module.coef
            if getattr(module, "bias", None) is not None:
                out[f"{name}.bias"] = module.lrmul
    return out


def lr_equalization_coefs(cfg: ModelConfig) -> dict[str, float]:
    """The authors' name (``network/key``) -> our run-time coefficient for it (their LREQ coefficient)."""
    scales = _scales(ALAE(cfg))
    return {f"{p.network}/{p.theirs}": scales[p.ours] for p in key_pairs(cfg) if p.ours in scales}


def convert(models: Mapping[str, Mapping[str, torch.Tensor]], cfg: ModelConfig, suffix: str = "_s") -> dict[str, torch.Tensor]:
    """Our ALAE state dict from the authors' ``models`` dict: networks ``<name><suffix>`` ("_s": EMA).

    Every key and shape is checked, in the file's order, and the first that does not fit is named;
    nothing is returned half-converted.
    """
    model = ALAE(cfg)
    ours_sd = model.state_dict()
    scales = _scales(model)
    pairs = {(p.network, p.theirs): p for p in key_pairs(cfg)}
    blurs = set(blur_keys(cfg))
    out = {}
    for base in [*NETWORKS.values(), "dlatent_avg"]:  # E, G, D, F, then the average: the file's order
        net = base if base == "dlatent_avg" else base + suffix
        sd = models.get(net)
        if not isinstance(sd, Mapping):
            raise AuthorsFormatError(f"the checkpoint has no network {net!r} (it has: {', '.join(sorted(models))})")
        for key, t in sd.items():
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            if (base, key) in blurs:
                if not torch.is_tensor(t) or t.dim() != 4 or not torch.allclose(t.float(), BLUR_KERNEL.expand_as(t)):
                    raise AuthorsFormatError(f"{net}/{key} is not the fixed [1 2 1] blur filter")
                continue
            pair = pairs.get((base, key))
            if pair is None:
                raise AuthorsFormatError(f"{net}/{key} {shape} has no place in this configuration ({_describe(cfg)})")
            want = their_shape(pair, ours_sd[pair.ours].shape)
            if shape != want:
                raise AuthorsFormatError(f"{net}/{key} has shape {shape}, this configuration expects {want} "
                                         f"({_describe(cfg)})")
            t = t.detach().to(torch.float32)
            if pair.transposed:
                t = t.transpose(0, 1).flip([2, 3])  # transposed-conv kernel -> conv kernel of nearest-up + conv
            out[pair.ours] = (t / scales.get(pair.ours, 1.0)).contiguous()
    missing = [f"{p.network}{'' if p.network == 'dlatent_avg' else suffix}/{p.theirs}"
               for p in pairs.values() if p.ours not in out]
    if missing:
        raise AuthorsFormatError(f"{missing[0]} is missing ({len(missing)} key(s) in all): the checkpoint does not "
                                 f"fit this configuration ({_describe(cfg)})")
    return out


def _describe(cfg: ModelConfig) -> str:
    return (f"{cfg.max_resolution}px, latent {cfg.latent_size}, channels {cfg.start_channels}..{cfg.max_channels}, "
            f"{cfg.mapping_layers} mapping layers")


# --- their configs -------------------------------------------------------------------------------

# Their defaults.py (commit 42bcf2e): a config file holds only the keys it changes.
THEIR_DEFAULTS: dict[str, dict[str, Any]] = {
    "MODEL": {"LAYER_COUNT": 6, "START_CHANNEL_COUNT": 64, "MAX_CHANNEL_COUNT": 512, "LATENT_SPACE_SIZE": 256,
              "DLATENT_AVG_BETA": 0.995, "TRUNCATIOM_PSI": 0.7, "TRUNCATIOM_CUTOFF": 8, "STYLE_MIXING_PROB": 0.9,
              "MAPPING_LAYERS": 5, "CHANNELS": 3, "GENERATOR": "GeneratorDefault", "ENCODER": "EncoderDefault",
              "MAPPING_TO_LATENT": "MappingToLatent", "MAPPING_FROM_LATENT": "MappingFromLatent",
              "Z_REGRESSION": False},
    "TRAIN": {"EPOCHS_PER_LOD": 15, "TRAIN_EPOCHS": 110, "ADAM_BETA_0": 0.0, "ADAM_BETA_1": 0.99,
              "LOD_2_BATCH_8GPU": [512, 256, 128, 64, 32, 32], "LEARNING_RATES": [0.002]},
    "DATASET": {"SIZE": 70000},
}
_SUPPORTED = {"GENERATOR": "GeneratorDefault", "ENCODER": "EncoderDefault", "MAPPING_TO_LATENT": "MappingToLatent",
              "MAPPING_FROM_LATENT": "MappingFromLatent", "Z_REGRESSION": False}


def config_from_authors(path: str | Path) -> Config:
    """Our Config for one of their yacs config files (networks, truncation, mixing and schedule).

    Their 8-GPU batch table is taken as the global batch; each level lasts EPOCHS_PER_LOD epochs of
    DATASET.SIZE images (half fade-in, half stable), the top level until TRAIN_EPOCHS.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"authors' config {str(path)!r}: cannot read it: {_first_line(str(exc))}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"authors' config {str(path)!r} must hold a mapping")
    sec = {name: {**THEIR_DEFAULTS.get(name, {}), **(raw.get(name) or {})} for name in ("MODEL", "TRAIN", "DATASET")}
    m, t = sec["MODEL"], sec["TRAIN"]
    unknown = sorted(set(raw.get("MODEL") or {}) - set(THEIR_DEFAULTS["MODEL"]))
    if unknown:
        raise ConfigError(f"authors' config {str(path)!r}: unknown MODEL key(s) {', '.join(unknown)}")
    for key, value in _SUPPORTED.items():
        if m[key] != value:
            raise ConfigError(f"authors' config {str(path)!r}: MODEL.{key} is {m[key]!r}; alae-ray implements "
                              f"their default networks only ({key} = {value!r})")
    levels = int(m["LAYER_COUNT"])
    model = ModelConfig(kind="style", latent_size=int(m["LATENT_SPACE_SIZE"]), mapping_layers=int(m["MAPPING_LAYERS"]),
                        channels=int(m["CHANNELS"]), max_resolution=4 * 2 ** (levels - 1),
                        start_channels=int(m["START_CHANNEL_COUNT"]), max_channels=int(m["MAX_CHANNEL_COUNT"]))
    train = TrainConfig(adam_beta1=float(t["ADAM_BETA_0"]), adam_beta2=float(t["ADAM_BETA_1"]),
                        style_mixing_prob=float(m["STYLE_MIXING_PROB"]), w_avg_beta=float(m["DLATENT_AVG_BETA"]),
                        truncation_psi=float(m["TRUNCATIOM_PSI"]), truncation_cutoff=int(m["TRUNCATIOM_CUTOFF"]))
    size = _dataset_size(sec["DATASET"]["SIZE"])
    level_kimg = int(t["EPOCHS_PER_LOD"]) * size / 1000.0
    batches, lrs = list(t["LOD_2_BATCH_8GPU"]), list(t["LEARNING_RATES"])
    schedule = ScheduleConfig(
        fade_kimg=level_kimg / 2, stable_kimg=level_kimg / 2,
        final_kimg=max(0.0, (int(t["TRAIN_EPOCHS"]) - levels * int(t["EPOCHS_PER_LOD"])) * size / 1000.0),
        batch={4 * 2**i: int(b) for i, b in enumerate(batches[:levels])},
        lr={4 * 2**i: max(float(v), 1e-4) for i, v in enumerate(lrs[:levels])})  # their scheduler floors lr at 1e-4
    name = str(raw.get("NAME") or path.stem)
    return validate(Config(name=name, model=model, train=train, schedule=schedule))


def _dataset_size(value: Any) -> int:
    # Their celeba.yaml writes "202576 - 182637", which yacs once evaluated as Python.
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*[+-]\s*\d+)*\s*", value):
        value = sum(int(term.replace(" ", "")) for term in re.findall(r"[+-]?\s*\d+", value))
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"authors' config: DATASET.SIZE must be a number, got {value!r}") from None


def state_from_checkpoint(data: Mapping[str, Any], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(EMA state, training-model state or None) of our ALAE from a loaded authors' checkpoint."""
    models = data["models"]
    ema = convert(models, cfg, suffix="_s") if "generator_s" in models else None
    train = convert(models, cfg, suffix="") if "generator" in models else None
    if ema is None and train is None:
        raise AuthorsFormatError(f"the checkpoint holds no generator (networks: {', '.join(sorted(models))})")
    return (ema if ema is not None else train), train

