"""Which dataset a run reads and where it writes: the embedded procedural default (generated once
into the local cache), the check that a dataset holds what a preset trains, and the run storage's
root for Ray. Shared by train, tune and the baselines in eval."""

from __future__ import annotations

from pathlib import Path

from ..core.config import Config
from ..data import Manifest, PrepareOptions, prepare
from ..data.sources import shapes_source
from ..data.storage import DatasetError, cache_dir, resolve

# Images in the embedded procedural dataset (~3 s to generate, ~9 MB). Every epoch restarts Ray
# Data's streaming split (1-6 s on a small machine), so epochs must not be short at 4x4.
EMBEDDED_COUNT = 20_000


def embedded_dataset(resolution: int, count: int = EMBEDDED_COUNT, seed: int = 0) -> str:
    """The procedural dataset in the local cache, generated if missing (resumable)."""
    dest = cache_dir("datasets") / f"shapes-{resolution}px-{count}-seed{seed}"
    if not (dest / "manifest.json").exists():
        print(f"generating the embedded procedural dataset ({count} images, {resolution}px) at {dest}", flush=True)
        prepare(shapes_source(count, resolution, seed), str(dest), PrepareOptions(seed=seed))
    return str(dest)


def embedded_for(cfg: Config, count: int = EMBEDDED_COUNT) -> str:
    """The embedded dataset a preset trains on: every level of a StyleALAE, 32x32 for the MLP one."""
    return embedded_dataset(cfg.model.max_resolution if cfg.model.kind == "style" else 32, count, cfg.train.seed)


def dataset_levels(cfg: Config, manifest: Manifest) -> list[int]:
    """The levels of ``manifest`` that ``cfg`` trains; DatasetError naming the dataset when it lacks
    one of them or has other channels."""
    if cfg.model.kind == "mlp":
        return list(manifest.resolutions[-1:])
    need = [cfg.model.resolution(l) for l in range(cfg.model.level_of(cfg.schedule.start_resolution), cfg.model.num_levels)]
    missing = [r for r in need if r not in manifest.resolutions]
    if missing:
        raise DatasetError(f"{manifest.uri}: has levels {manifest.resolutions} but preset {cfg.name!r} "
                           f"needs {need} (missing {missing}); prepare it with --resolution {need[-1]}")
    if manifest.channels != cfg.model.channels:
        raise DatasetError(f"{manifest.uri}: {manifest.channels}-channel images, but the model expects "
                           f"{cfg.model.channels} (set model.channels)")
    return need


def storage_root(uri: str) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) of a run storage URI, for Ray's RunConfig."""
    if uri.startswith("s3://"):
        loc = resolve(uri.rstrip("/"))
        return loc.path, loc.fs
    return str(Path(uri).expanduser().resolve()), None
