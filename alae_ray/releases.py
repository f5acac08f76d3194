"""The authors' released models: where they are, downloading them, and ``alae-ray import-authors``.

``alae-ray import-authors SRC --out DIR`` turns one of their ``.pth`` files (a path, or a released
file by name, downloaded once into the cache) into an ordinary alae-ray checkpoint directory that
``serve``, ``eval``, ``train --init`` and ``alae_ray.load`` accept. The file is read with
``torch.load(weights_only=True)`` (``alae_ray.core.authors``): nothing in it is executed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .data.storage import cache_dir

# Base of the authors' S3 mirror (their training_artifacts/download_all.py); files are <config>/<file>.
S3_BASE = "https://alaeweights.s3.us-east-2.amazonaws.com/"
DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
TIMEOUT_S = 60  # per connection attempt and per read: a stalled download fails instead of hanging


@dataclass(frozen=True)
class Release:
    config: str  # their config folder: ffhq, celeba-hq256, bedroom, celeba
    file: str  # e.g. model_157.pth
    preset: str  # our preset with the same networks
    drive_id: str  # their Google Drive id (the mirror they list first)

    @property
    def name(self) -> str:
        return f"{self.config}/{self.file}"


RELEASES = [
    Release("ffhq", "model_submitted.pth", "ffhq1024", "170Qldnn28IwnVm9CQEq1AZhVsK7PJ0Xz"),
    Release("ffhq", "model_194.pth", "ffhq1024", "1QESywJW8N-g3n0Csy0clztuJV99g8pRm"),
    Release("ffhq", "model_157.pth", "ffhq1024", "18BzFYKS3icFd1DQKKTeje7CKbEKXPVug"),
    Release("celeba", "model_final.pth", "celeba128", "1T4gkE7-COHpX38qPwjMYO-xU-SrY_aT4"),
    Release("bedroom", "model_final.pth", "bedroom256", "1gmYbc6Z8qJHJwICYDsB4aBMxXjnKeXA_"),
    Release("celeba-hq256", "model_262r.pth", "celebahq256", "1ihJvp8iJWcLxTIjkV5cyA7l9TrxlUPkG"),
    Release("celeba-hq256", "model_580r.pth", "celebahq256", "1gFQsGCNKo-frzKmA3aCvx07ShRymRIKZ"),
]
# A config's name alone means the file their demos load (``last_checkpoint``).
DEFAULTS = {"ffhq": "ffhq/model_157.pth", "celeba": "celeba/model_final.pth", "bedroom": "bedroom/model_final.pth",
            "celeba-hq256": "celeba-hq256/model_262r.pth"}


class ReleaseError(ValueError):
    """An unknown release name or a failed download; the message says what to do."""


def find_release(name: str) -> Release | None:
    name = DEFAULTS.get(name, name)
    return next((r for r in RELEASES if r.name == name), None)


def release_urls(r: Release) -> list[str]:
    """Where to fetch it, in order; ``ALAE_RAY_RELEASES_URL`` replaces the S3 mirror's base (a mirror of your own)."""
    base = os.environ.get("ALAE_RAY_RELEASES_URL")
    if base:
        return [base.rstrip("/") + "/" + r.name]
    return [S3_BASE + r.name, DRIVE_URL.format(id=r.drive_id)]


def fetch(r: Release, *, progress: bool = True) -> Path:
    """The release's file in the cache, downloaded first if needed (temporary name, size check, rename)."""
    dest = cache_dir("authors") / r.config / r.file
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in release_urls(r):
        try:
            _download(url, dest, progress=progress)
            return dest
        except (OSError, urllib.error.URLError, ReleaseError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    raise ReleaseError(f"cannot download {r.name} ({'; '.join(errors)}). Without internet access, download it "
                       f"elsewhere (Google Drive id {r.drive_id}) and pass its path instead of the name")


def _download(url: str, dest: Path, *, progress: bool) -> None:
    from tqdm import tqdm

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            if "text/html" in (resp.headers.get("Content-Type") or ""):
                raise ReleaseError("answered with a web page, not the file (moved, or a quota page)")
            size = int(resp.headers.get("Content-Length") or 0) or None
            got = 0
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
                      file=sys.stderr) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if size is not None and got != size:
            raise ReleaseError(f"incomplete download: {got:,} of {size:,} bytes")
        if got == 0:
            raise ReleaseError("empty download")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- import-authors ---------------------------------------------------------------------------------


def import_authors(src: str, out: str | Path, *, preset: str | None = None, config: str | None = None,
                   force: bool = False, progress: bool = True) -> dict:
    """Convert an authors' checkpoint into an alae-ray checkpoint at ``out``; returns a summary.

    Every check (source, configuration, every key and shape) happens before anything is written; the
    checkpoint is written under a temporary name and renamed, so ``out`` is never half-written.
    """
    from .core import authors
    from .core.checkpoint import is_checkpoint, write_checkpoint
    from .core.config import ConfigError, load_config
    from .core.schedule import level_spans

    out = Path(out)
    if out.exists() and not (force and is_checkpoint(out)):
        raise ReleaseError(f"--out {str(out)!r} already exists" + (" (use --force to replace that checkpoint)"
                                                                   if is_checkpoint(out) else ""))
    if preset and config:
        raise ConfigError("give --preset or --config, not both")
    release = None if Path(src).exists() else find_release(src)
    if release is None and not Path(src).exists():
        names = ", ".join([*DEFAULTS, *(r.name for r in RELEASES)])
        raise ReleaseError(f"{src!r} is neither a file nor a released model; released: {names}")
    if config:
        cfg = authors.config_from_authors(config)
    elif preset or release:
        cfg = load_config(preset or release.preset)
    else:
        raise ConfigError(f"{src}: say which configuration it was trained with: --preset (ffhq1024, celebahq256, "
                          f"bedroom256, celeba128) or --config (the authors' YAML file)")
    path = fetch(release, progress=progress) if release else Path(src)
    data = authors.load_pth(path)
    ema, trained = authors.state_from_checkpoint(data, cfg.model)
    tensors = {f"ema.{k}": v for k, v in ema.items()}
    tensors.update({f"model.{k}": v for k, v in (trained or ema).items()})
    top, top_start, _ = level_spans(cfg)[-1]
    # Training from here continues at the top level, past its fade-in (the authors' run ended there).
    seen = round((top_start + cfg.schedule.fade_kimg) * 1000) if len(level_spans(cfg)) > 1 else 0
    progress_info = {"images_seen": seen, "iteration": 0, "level": top, "kimg": seen / 1000,
                     "imported_from": release.name if release else str(Path(src).resolve()),
                     "networks": "EMA (_s) for ema.*; " + ("their training networks" if trained else "EMA") + " for model.*"}
    write_checkpoint(out, cfg, tensors, progress_info)
    counts = {net: sum(v.numel() for k, v in ema.items() if k.startswith(net + ".")) for net in ("F", "G", "E", "D")}
    return {"out": str(out), "preset": cfg.name, "resolution": cfg.model.max_resolution, "source": str(path),
            "parameters": counts, "training_networks": trained is not None}


def cmd_import_authors(args) -> int:
    from .core.authors import AuthorsFormatError

    try:
        s = import_authors(args.src, args.out, preset=args.preset, config=args.config, force=args.force,
                           progress=not args.quiet)
    except (AuthorsFormatError, ReleaseError) as exc:
        print(f"alae-ray import-authors: error: {exc}", file=sys.stderr)
        return 2
    p = s["parameters"]
    print(f"imported {s['source']} -> {s['out']}\n  preset {s['preset']}, {s['resolution']}x{s['resolution']}; "
          f"F {p['F']:,}, G {p['G']:,}, E {p['E']:,}, D {p['D']:,} parameters"
          f"{'' if s['training_networks'] else ' (EMA networks only)'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-authors", help="convert an ALAE authors' checkpoint (.pth) into an alae-ray checkpoint",
                       description="Convert one of the ALAE authors' checkpoints into an alae-ray checkpoint for "
                                   "serve, eval, train --init and alae_ray.load. SRC is a .pth file or a released "
                                   "model by name (downloaded once into ~/.cache/alae-ray/authors): "
                                   + ", ".join([*DEFAULTS, *(r.name for r in RELEASES)]) + ".")
    p.add_argument("src", help="a .pth path or a released model's name")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist)")
    p.add_argument("--preset", help="our preset with the file's networks (default for a released name: its own)")
    p.add_argument("--config", help="the authors' YAML config the file was trained with (instead of --preset)")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    p.set_defaults(func=cmd_import_authors)
