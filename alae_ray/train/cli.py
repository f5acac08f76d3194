"""``alae-ray train``: distributed ALAE training on Ray Train."""

from __future__ import annotations

import argparse
import sys


def cmd_train(args) -> int:
    from ..infra.checkpoints import locate_checkpoint
    from .run import MAIN_PRESET, TrainOptions, describe, dump_summary, format_summary, run

    init = args.init and locate_checkpoint(args.init, "alae-ray train: --init")
    opts = TrainOptions(preset=args.preset or (None if args.init else MAIN_PRESET), overrides=args.set or [], data=args.data, storage=args.storage,
                        name=args.name, workers=args.workers[0], max_workers=args.workers[1],
                        resize_check_s=args.resize_check, streams=args.data_streams, gpu=args.gpu,
                        max_kimg=args.max_kimg,
                        tick_kimg=args.tick_kimg, checkpoint_kimg=args.checkpoint_kimg, keep=args.keep,
                        max_failures=args.max_failures, flip=not args.no_flip,
                        cpus_per_worker=args.cpus_per_worker, init_checkpoint=init,
                        stall_timeout_s=args.stall_timeout, verbose=args.verbose, allow_changes=args.allow_changes,
                        validate=args.validate, validation_cpus=args.validation_cpus,
                        validation_gpus=args.validation_gpus, validation_timeout_s=args.validation_timeout,
                        keep_best=args.keep_best)
    try:
        summary = run(describe(opts))
    except Exception as exc:  # Ray wraps worker errors; show the root cause in one line
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if type(exc).__module__.startswith("ray"):
            print(f"alae-ray train: training failed: {type(cause).__name__}: {cause}", file=sys.stderr)
            return 1
        raise
    print(dump_summary(summary) if args.json else format_summary(summary))
    return 0


def worker_range(text: str) -> tuple[int, int | None]:
    """``--workers``: N, or MIN-MAX for an elastic run."""
    lo, dash, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi) if dash else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX (e.g. 4 or 2-8), got {text!r}") from None
    return pair


def register(sub) -> None:
    p = sub.add_parser("train", help="train on Ray Train (local Ray, or the cluster in RAY_ADDRESS)",
                       description="Train ALAE with Ray Train. With no --data, generates the embedded procedural "
                                   "dataset and trains the preset on a local Ray. Re-running the same command "
                                   "resumes from the latest checkpoint.")
    p.add_argument("--preset", default=None, help="preset name or YAML path (default: shapes, the main job; with --init the "
                                                    "config of that checkpoint)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted config override, repeatable")
    p.add_argument("--data", default=None, help="dataset URI from `alae-ray prepare` (local path or s3://...)")
    p.add_argument("--storage", default="runs", help="checkpoints and artifacts: local path or s3://bucket/prefix")
    p.add_argument("--name", default=None, help="run name (default: the preset name); the same name resumes")
    p.add_argument("--workers", type=worker_range, default=(1, None), metavar="N|MIN-MAX",
                   help="Ray Train workers (default 1); MIN-MAX: elastic, starting with as many as the cluster has room "
                        "for, going on with fewer when a node is lost and growing when nodes return (each change "
                        "restarts from the latest checkpoint; the batches are the same at any count)")
    p.add_argument("--resize-check", type=float, default=60.0, metavar="SECONDS",
                   help="how often an elastic run looks for room to grow (default 60)")
    p.add_argument("--data-streams", type=int, default=None, metavar="N",
                   help="the data order's streams: every worker count up to N reads the same rows in the same "
                        "batches, and a run resumes exactly at any of them (default: the largest divisor of every "
                        "batch of the schedule, up to 32)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--max-kimg", type=float, default=None, help="stop after this many thousand images")
    p.add_argument("--tick-kimg", type=float, default=0.5, help="report interval (kimg)")
    p.add_argument("--checkpoint-kimg", type=float, default=None,
                   help="checkpoint interval (kimg); default: every 2 kimg or more, spaced so that checkpoints "
                        "stop training for under 2%% of its time")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--validate", choices=("auto", "shapes", "digits", "off"), default="auto",
                   help="judge each checkpoint in a Ray task of its own while training goes on (default auto: the "
                        "shapes judge on the procedural shapes, the digits judge on MNIST prepared from IDX files, "
                        "none otherwise); its metrics join the checkpoint's, metrics.jsonl, TensorBoard and the console")
    p.add_argument("--validation-cpus", type=float, default=0.0, metavar="N",
                   help="CPUs the validation task asks Ray for (default 0: a judge takes seconds, and a 2-CPU machine "
                        "has none to spare)")
    p.add_argument("--validation-gpus", type=float, default=0.0, metavar="N",
                   help="GPUs the validation task asks Ray for (it judges on the GPU when it has one)")
    p.add_argument("--validation-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a validation still running after this long is cancelled (default 300)")
    p.add_argument("--keep-best", metavar="METRIC", default=None,
                   help="keep the --keep best checkpoints by this validation metric (e.g. val_hue_deg, val_recon_pct) "
                        "beside the newest, instead of the newest --keep")
    p.add_argument("--max-failures", type=int, default=None,
                   help="restarts from the latest checkpoint after a lost worker (default: 3 on a cluster, 0 on "
                        "a local Ray); a non-finite loss is never retried")
    p.add_argument("--stall-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="stop with an error saying what the run waited for when nothing happens this long "
                        "(default 600; 0: wait for ever)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--init", metavar="CHECKPOINT", default=None,
                   help="start a new run from this checkpoint's networks (e.g. one from `alae-ray import-authors`, "
                        "to fine-tune); ignored once the run has checkpoints of its own")
    p.add_argument("--allow-changes", action="store_true",
                   help="continue a run (the same --name) with another preset, overrides, data or flips than it was "
                        "started with (otherwise refused, naming the first difference); run.json records the change")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--verbose", action="store_true", help="also print Ray's own logs from the workers "
                   "(otherwise they stay in Ray's session log files)")
    p.set_defaults(func=cmd_train)
