"""The Tune function trainable: one trial = one Ray Train run (``alae_ray.train.run``).

Each trial writes its sampled config as a preset, builds the usual TorchTrainer with
``TuneReportCallback`` (every training tick becomes a Tune result, carrying the objective and
``trial_kimg``, the kimg trained in this trial: ASHA's clock), and fits it. The Train run is named
after the trial id under ``<experiment>/trials``, so a trial re-run after the sweep was interrupted
resumes its Train run from the latest checkpoint (Ray Train V2 resumes a run with the same name and
storage). A trial whose losses turn non-finite ends with one last result whose objective is
``DIVERGED``: a bad trial, not a failed sweep.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from ray.tune.integration.ray_train import TuneReportCallback

from ..train.objective import DIVERGED


class ReportToTune(TuneReportCallback):
    """TuneReportCallback that adds ``trial_kimg`` (kimg trained since the trial's start)."""

    def __init__(self, start_kimg: float):
        super().__init__()
        self.start_kimg = start_kimg

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0])
        if "kimg" in first:
            first["trial_kimg"] = round(first["kimg"] - self.start_kimg, 6)
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def diverged(exc: BaseException) -> bool:
    """Whether a training failure is a non-finite loss (anywhere in Ray's wrapping of it)."""
    from ..core.phases import NonFiniteLossError

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (NonFiniteLossError, FloatingPointError)) or "non-finite" in str(e):
            return True
        todo += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
        todo += list(getattr(e, "errors", []) or [])
    return False


def _last_metrics(artifacts: str) -> dict:
    path = Path(artifacts) / "metrics.jsonl"
    try:
        lines = [l for l in path.read_text().splitlines() if l.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def trial_options(plan, params: dict, trial_id: str, ctx: dict, preset_path: str):
    """The TrainOptions of one trial (pure: used by the trainable and by tests)."""
    from ..train.run import TrainOptions

    s = plan.sweep
    o, t = s.objective, s.trial
    return TrainOptions(
        preset=preset_path, data=ctx["data"], storage=ctx["trials_storage"], name=trial_id,
        workers=t.workers, gpu=t.gpu, cpus_per_worker=t.cpus_per_worker, max_kimg=plan.max_kimg,
        tick_kimg=o.every_kimg, checkpoint_kimg=t.checkpoint_kimg or o.every_kimg, keep=2,
        max_failures=t.max_failures, console=False, shuffle_buffer=ctx.get("shuffle_buffer", 2048),
        init_checkpoint=s.start.checkpoint if s.start else None,
        objective=dataclasses.asdict(o),
    )


def run_trial(config: dict, ctx: dict) -> None:
    """Tune entry point (wrapped in ``tune.with_parameters(run_trial, ctx=...)``)."""
    from ray import tune

    from ..core.config import save_yaml
    from ..train.run import build_trainer, fit

    plan = ctx["plan"]
    trial_id = tune.get_context().get_trial_id()
    cfg = plan.config(config, name=f"{plan.sweep.name}-{trial_id}")
    folder = Path(tempfile.mkdtemp(prefix=f"alae-tune-{trial_id}-"))
    preset = folder / "preset.yaml"
    save_yaml(cfg, preset)
    try:  # a copy beside Tune's own trial files, for people
        save_yaml(cfg, Path(tune.get_context().get_trial_dir()) / "preset.yaml")
    except OSError:
        pass
    opts = trial_options(plan, config, trial_id, ctx, str(preset))
    opts.callbacks = [ReportToTune(plan.start_kimg)]
    trainer, info = build_trainer(opts)
    try:
        fit(trainer, info, opts.stall_timeout_s)
    except Exception as exc:
        if not diverged(exc):
            raise
        last = _last_metrics(info["artifacts"])
        kimg = float(last.get("kimg", plan.start_kimg))
        tune.report({"objective": DIVERGED, "objective_finite": False, "diverged": True, "kimg": kimg,
                     "trial_kimg": round(kimg - plan.start_kimg, 6), "error": str(exc).splitlines()[0][:300]})
