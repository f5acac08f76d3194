"""``alae-ray tune``: Ray Tune sweeps over R1 gamma, learning rates and per-level batch sizes."""

from __future__ import annotations

import json
import sys


def cmd_tune(args) -> int:
    from .runner import TuneOptions, format_summary, prepare_sweep, run_sweep

    resume = "always" if args.resume else "never" if args.no_resume else "auto"
    opts = TuneOptions(sweep=args.sweep, storage=args.storage, name=args.name, data=args.data, resume=resume,
                       verbose=0 if args.quiet else 2 if args.verbose else 1)
    if args.check:
        plan, *_, data = prepare_sweep(opts, check_only=True)
        s = plan.sweep
        print(f"sweep {s.name}: {len(s.space)} parameter(s) ({', '.join(p.key for p in s.space)}), "
              f"{s.search.num_samples} sample(s), {s.scheduler.kind}, objective {s.objective.kind} every "
              f"{s.objective.every_kimg:g} kimg, {s.trial.kimg:g} kimg per trial from {plan.start_kimg:g} kimg, data "
              f"{data or 'the embedded procedural dataset (made at the first run)'}: OK")
        return 0
    summary = run_sweep(opts)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    if summary["best"] is None:
        print("alae-ray tune: no trial finished with a finite objective", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter sweeps on Ray Tune (ASHA), from scratch or from a checkpoint",
                       description="Run a sweep defined in tuning/NAME.yaml: every trial is a Ray Train run; the "
                                   "objective is reported at fixed kimg so ASHA stops bad trials early. Re-running "
                                   "the same command resumes an interrupted sweep. Writes results.csv, results.md and "
                                   "best_preset.yaml into STORAGE/NAME.")
    p.add_argument("--sweep", required=True, help="sweep YAML (e.g. tuning/tiny_r1_lr.yaml)")
    p.add_argument("--storage", default="runs/tune", help="local folder or s3://bucket/prefix (default runs/tune)")
    p.add_argument("--name", default=None, help="experiment name (default: the sweep's name); the same name resumes")
    p.add_argument("--data", default=None, help="dataset URI (default: the embedded procedural dataset)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="the experiment must exist: resume it")
    g.add_argument("--no-resume", action="store_true", help="the experiment must not exist yet")
    p.add_argument("--check", action="store_true", help="validate the sweep, checkpoint and data, then exit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true", help="print only the summary at the end")
    g.add_argument("--verbose", action="store_true",
                   help="Tune's status tables and Ray's own log lines instead of one line per trial event")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_tune)
