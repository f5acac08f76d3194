"""The Tune function trainable: one trial = one Ray Train run (``alae_ray.train.run``).

Each trial describes its Train run with its sampled config (``trial_spec``; a copy of the config is
kept beside Tune's trial files as ``preset.yaml``), builds the usual TorchTrainer with
``TuneReportCallback`` (every training tick becomes a Tune result, carrying the objective and
``trial_kimg``, the kimg trained in this trial: ASHA's clock), and fits it. The Train run is named
after the trial id under ``<experiment>/trials``, so a trial re-run after the sweep was interrupted
resumes its Train run from the latest checkpoint (Ray Train V2 resumes a run with the same name and
storage). A trial whose losses turn non-finite ends with one last result whose objective is
``DIVERGED``: a bad trial, not a failed sweep.

In a population sweep (``scheduler.kind`` pbt/pb2) a trial is a member (``run_member``): it trains in
segments, one Train run each, up to each perturbation point, and reports there once, with a real
Tune checkpoint (the Train checkpoint plus ``schedule.json``, the values that made it, kimg by kimg).
Tune hands that checkpoint back when the member resumes, or another member's when it exploits; the
next segment starts from it (networks, EMA, optimizers, w average, images seen, data position) with
the member's current values. Segments take turns on the cluster through ``Slots``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.tune.integration.ray_train import TuneReportCallback

from ..train.objective import DIVERGED
from ..train.spec import RunSpec
from .sweep import SweepPlan


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


def diverged_result(exc: BaseException, artifacts: str, plan, kimg: float) -> dict:
    """The last result of a trial whose losses turned non-finite: the worst objective, at the kimg its
    metrics log last reached (``kimg`` if it has none)."""
    k = float(_last_metrics(artifacts).get("kimg", kimg))
    return {"objective": DIVERGED, "objective_finite": False, "diverged": True, "kimg": k,
            "trial_kimg": round(k - plan.start_kimg, 6), "error": str(exc).splitlines()[0][:300]}


def _last_metrics(artifacts: str) -> dict:
    path = Path(artifacts) / "metrics.jsonl"
    try:
        lines = [l for l in path.read_text().splitlines() if l.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares (``tune.with_parameters`` hands it to each)."""

    plan: SweepPlan
    data: str  # the dataset every trial reads
    trials_storage: str  # where the trials' Train runs go: <experiment>/trials
    shuffle_buffer: int = 2048  # the sweep's (recorded in sweep.json: part of each run's definition)
    worker_callbacks: tuple = ()  # testing: session callbacks of each trial's Train run (train.run.build_trainer)
    slots: Any = None  # population sweeps: the Slots actor members take turns through


def trial_spec(ctx: TrialContext, params: dict, name: str, *, config_name: str | None = None,
               max_kimg: float | None = None, init: str | None = None) -> RunSpec:
    """The Train run (named ``name``) of one trial, or of one member's segment up to ``max_kimg`` from
    ``init``: the trial's sampled config as it is (named ``config_name``, default ``name``), with the
    sweep's trial settings."""
    from ..train.run import TrainOptions, describe

    plan = ctx.plan
    s = plan.sweep
    o, t = s.objective, s.trial
    opts = TrainOptions(
        data=ctx.data, storage=ctx.trials_storage, name=name,
        workers=t.workers, max_workers=t.max_workers or None, gpu=t.gpu, cpus_per_worker=t.cpus_per_worker,
        max_kimg=max_kimg or plan.max_kimg,
        tick_kimg=o.every_kimg, checkpoint_kimg=t.checkpoint_kimg or o.every_kimg, keep=2,
        max_failures=t.max_failures, stall_timeout_s=t.stall_timeout_s, console=False,
        shuffle_buffer=ctx.shuffle_buffer,
        init_checkpoint=init or (s.start.checkpoint if s.start else None),
        validate="off",  # a trial reports its sweep's objective every tick; judges cost CPU beside trials
    )
    spec = describe(opts, config=plan.config(params, name=config_name or name))
    return dataclasses.replace(spec, objective=dataclasses.asdict(o), init_data_position=init is not None)


def _keep_preset(spec: RunSpec) -> None:
    """A copy of the trial's config beside Tune's own trial files, for people (loadable as a preset)."""
    from ray import tune

    from ..core.config import save_yaml

    try:
        save_yaml(spec.config, Path(tune.get_context().get_trial_dir()) / "preset.yaml")
    except OSError:
        pass


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Tune entry point (wrapped in ``tune.with_parameters(run_trial, ctx=...)``)."""
    from ray import tune

    from ..train.run import build_trainer, fit

    plan = ctx.plan
    if ctx.slots is not None:
        return run_member(config, ctx)
    trial_id = tune.get_context().get_trial_id()
    spec = trial_spec(ctx, config, trial_id, config_name=f"{plan.sweep.name}-{trial_id}")
    _keep_preset(spec)
    trainer, board = build_trainer(spec, callbacks=[ReportToTune(plan.start_kimg)],
                                   worker_callbacks=ctx.worker_callbacks)
    try:
        fit(trainer, spec, board)
    except Exception as exc:
        if not diverged(exc):
            raise
        tune.report(diverged_result(exc, spec.artifacts_shown, plan, plan.start_kimg))


# --- population members --------------------------------------------------------------------------

SCHEDULE_FILE = "schedule.json"


LEASE_S = 120.0  # a slot whose holder has not renewed it for this long is free again (a lost member)


@ray.remote(num_cpus=0)
class Slots:
    """At most ``n`` members' segments train at once (what the cluster holds; ``fit_concurrency``).

    Tune sees a member as its driver's 0.01 CPU, so without this every member would start its Train
    run at once and, on a small cluster, none would get a CPU for its data. A member takes a slot
    before it builds anything with a clock (its Train run's stall timeout counts training, not
    waiting), holds it for one segment, renewing its lease, and gives it back before it reports, so
    Tune pausing or re-seeding a member at its report never strands one. Asking never blocks in
    here: a member that stops asking leaves no pending request to take a slot later, and one that
    asks again (restarted) first returns any slot it held. A slot whose holder died unrenewed is
    freed after ``LEASE_S``. So a waiting member waits only while others train, each bounded by its
    own stall timeout.
    """

    def __init__(self, n: int):
        self.n = n
        self.holders: dict[str, float] = {}  # holder -> when its lease was last renewed (monotonic)

    def try_acquire(self, holder: str) -> list[str] | None:
        """None if ``holder`` now has a slot, else who holds them all."""
        now = time.monotonic()
        self.holders = {h: t for h, t in self.holders.items() if h != holder and now - t < LEASE_S}
        if len(self.holders) >= self.n:
            return sorted(self.holders)
        self.holders[holder] = now
        return None

    def renew(self, holder: str) -> None:
        if holder in self.holders:
            self.holders[holder] = time.monotonic()

    def release(self, holder: str) -> None:
        self.holders.pop(holder, None)


@contextlib.contextmanager
def slot(slots, holder: str, poll_s: float = 2.0):
    """Wait for a slot (saying so once), hold it with its lease renewed, then give it back; yields the
    seconds waited."""
    t0, said = time.monotonic(), False
    while (held_by := ray.get(slots.try_acquire.remote(holder), timeout=60)) is not None:
        if not said:
            print(f"member {holder}: waiting for a training slot (held by {', '.join(held_by)})", flush=True)
            said = True
        time.sleep(poll_s)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(LEASE_S / 4):
            slots.renew.remote(holder)

    renewer = threading.Thread(target=renew, name=f"slot-lease-{holder}", daemon=True)
    renewer.start()
    try:
        yield time.monotonic() - t0
    finally:
        done.set()
        ray.get(slots.release.remote(holder), timeout=60)


def checkpoint_uri(ckpt) -> str:
    """A Tune/Train checkpoint as the URI ``--init`` takes (local path or s3://)."""
    import pyarrow.fs as pafs

    return ckpt.path if isinstance(ckpt.filesystem, pafs.LocalFileSystem) else f"s3://{ckpt.path}"


def _start_state(plan, start) -> tuple[str | None, float, list]:
    """(init URI, kimg, schedule so far) of a member: from the checkpoint Tune hands it (its own on a
    resume, another member's after an exploit), else the sweep's start."""
    from ..core.checkpoint import PROGRESS_FILE

    if start is None:
        return (plan.sweep.start.checkpoint if plan.sweep.start else None), plan.start_kimg, []
    with start.as_directory() as d:
        history = json.loads((Path(d) / SCHEDULE_FILE).read_text())
        kimg = json.loads((Path(d) / PROGRESS_FILE).read_text())["images_seen"] / 1000.0
    return checkpoint_uri(start), kimg, history


def run_member(config: dict, ctx: TrialContext) -> None:
    """A population member: segments up to each perturbation point (see the module doc)."""
    from ray import tune

    from ..train.run import build_trainer, fit

    plan, slots = ctx.plan, ctx.slots
    trial_id = tune.get_context().get_trial_id()
    init, kimg, history = _start_state(plan, tune.get_checkpoint())
    values = {p.key: config[p.key] for p in plan.sweep.space}
    points = plan.perturbation_points()
    for segment, point in enumerate(points, 1):
        if point <= kimg + 1e-9:
            continue
        # One Train run per segment, named by where it starts and with what: a re-run of the same
        # segment (an interrupted sweep) resumes it, a new start (an exploit) is a new run.
        key = hashlib.sha256(json.dumps([init, values, point], sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{trial_id}-{round(kimg * 1000):09d}-{key}"
        spec = trial_spec(ctx, config, name, max_kimg=point, init=init)
        _keep_preset(spec)
        failure = None
        with slot(slots, trial_id) as waited_s:
            trainer, board = build_trainer(spec, worker_callbacks=ctx.worker_callbacks)  # its stall clock starts here, once the member may train
            try:
                result = fit(trainer, spec, board)
            except Exception as exc:
                if not diverged(exc):
                    raise
                failure = exc
        if failure is not None:
            tune.report({**diverged_result(failure, spec.artifacts_shown, plan, kimg), "segment": segment})
            return
        m = dict(result.metrics or {})
        history = history + [{"trial_id": trial_id, "from_kimg": kimg, "to_kimg": m["kimg"], "values": values,
                              "objective": m.get("objective")}]
        kimg, init = float(m["kimg"]), checkpoint_uri(result.checkpoint)
        folder = Path(tempfile.mkdtemp(prefix=f"alae-member-{trial_id}-"))
        try:
            with result.checkpoint.as_directory() as d:
                shutil.copytree(d, folder, dirs_exist_ok=True)
            (folder / SCHEDULE_FILE).write_text(json.dumps(history, indent=1))
            # Tune copies the checkpoint into the trial's storage before report returns.
            tune.report({**{k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))},
                         "trial_kimg": round(kimg - plan.start_kimg, 6), "segment": segment,
                         "final_segment": segment == len(points), "train_run": name,
                         "slot_wait_s": round(waited_s, 3)},
                        checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
