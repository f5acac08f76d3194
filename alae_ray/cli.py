"""The ``alae-ray`` command line: one entry point, one subcommand per job.

Subcommand modules expose ``register(subparsers)``; each parser sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from .core.config import ConfigError, load_config, preset_names

# Modules that add subcommands (each has ``register(subparsers)``).
MODULES = ("alae_ray.data.cli", "alae_ray.train.cli", "alae_ray.eval.cli", "alae_ray.tune.cli", "alae_ray.serve.cli",
           "alae_ray.releases")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cmd_info(args) -> int:
    from .core.model import ALAE  # torch import only when needed

    cfg = load_config(args.preset, args.set or [])
    model = ALAE(cfg.model)
    counts = {name: _count(getattr(model, name)) for name in ("F", "G", "E", "D")}
    counts["total"] = sum(counts.values())
    if args.json:
        print(json.dumps({"preset": cfg.name, "parameters": counts, "config": cfg.to_dict()}, indent=2))
        return 0
    m = cfg.model
    levels = f"{m.num_levels} level(s)" + (f", 4x4 -> {m.max_resolution}x{m.max_resolution}" if m.kind == "style" else "")
    print(f"preset {cfg.name}: {m.kind} ALAE, latent {m.latent_size}, {levels}")
    for name, n in counts.items():
        print(f"  {name:>5}  {n / 1e6:8.3f} M  ({n:,})")
    return 0


def cmd_export(args) -> int:
    """An inference checkpoint: the EMA networks and the w average, no optimizer state or RNGs."""
    from pathlib import Path

    from .api import local_checkpoint
    from .core.checkpoint import is_checkpoint, read_networks, write_checkpoint
    from .infra.checkpoints import locate_checkpoint

    out = Path(args.out)
    if out.exists() and not (args.force and is_checkpoint(out)):
        raise ValueError(f"--out {str(out)!r} already exists" + (" (use --force to replace that checkpoint)"
                                                                 if is_checkpoint(out) else ""))
    src = locate_checkpoint(args.checkpoint)
    with local_checkpoint(src) as path:
        cfg, state, progress = read_networks(path)
    write_checkpoint(out, cfg, {f"ema.{k}": v for k, v in state.items()},
                     {**progress, "exported_from": str(src), "inference_only": True})
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"exported {src} -> {out} ({cfg.name}, {size:.1f} MiB: the EMA networks and the w average)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alae-ray", description="Train and serve Adversarial Latent Autoencoders on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a preset's networks and parameter counts")
    p.add_argument("--preset", default="tiny", help=f"preset name or YAML path ({', '.join(preset_names())})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted config override, repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("export", help="write an inference checkpoint (EMA networks and w average only)",
                       description="Copy what inference needs (the EMA networks and the running average of w) "
                                   "from a checkpoint or a run directory's newest checkpoint into a smaller "
                                   "checkpoint for serve, eval and alae_ray.load; train --init accepts it too.")
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    p.set_defaults(func=cmd_export)
    for name in MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError) as exc:
        if os.environ.get("ALAE_RAY_DEBUG"):  # the whole traceback, for bug reports
            traceback.print_exc()
        print(f"alae-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
