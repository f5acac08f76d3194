"""The driver of ``alae-ray train``: describe the run (``describe``: ``TrainOptions``, what was asked,
becomes a checked ``RunSpec``), build the TorchTrainer from it, run, summarise.

With no ``--data`` the embedded default is used: a procedural shapes dataset generated once into the
local cache at the preset's resolution. Re-running with the same ``--name`` and ``--storage``
resumes from the latest checkpoint (Ray Train V2 restores it into the workers).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import Config, ConfigError, load_config
from ..core.schedule import stage_at, total_kimg
from ..data import open_dataset, read_first_rows
from ..data.reader import check_level_schemas
from ..data.stream import MAX_STREAMS, default_streams
from ..infra.board import fit_watched, new_board
from ..infra.checkpoints import checkpoint_info
from ..infra.datasets import EMBEDDED_COUNT, dataset_levels, embedded_for, storage_root
from ..infra.ray_session import Needs, cluster_can_grow, local_paths_warning, other_node_ips, preflight, start_ray
from .ownership import RunDefinition, RunLease, check_definition, dataset_digest, record_definition
from .spec import RunSpec
from .validation import data_judge, judgement, ray_config, resolve_validation

MAIN_PRESET = "shapes"  # the preset of `alae-ray train` with no arguments (the README's main job)


@dataclass
class TrainOptions:
    """What a run is asked to be (the flags of ``alae-ray train``, or a Tune trial's settings);
    ``describe`` checks it and resolves it into the ``RunSpec`` that everything after reads (Tune adds
    the fields only it sets, the objective and a member's data position, to that)."""

    preset: str | None = MAIN_PRESET  # Preset name or YAML path; None with init_checkpoint: that checkpoint's config.
    overrides: list[str] = field(default_factory=list)  # Dotted key=value overrides.
    data: str | None = None  # Dataset URI (local or s3://); None = the embedded procedural dataset.
    storage: str = "runs"  # Where checkpoints and artifacts go (local path or s3://bucket/prefix).
    name: str | None = None  # Run name; the same name resumes. Default: the preset's name.
    workers: int = 1  # Ray Train workers (with max_workers: the fewest the run trains with).
    max_workers: int | None = None  # Elastic: start with what is free up to this, shrink on a lost
    #                                 node and grow when nodes return (None: exactly ``workers``).
    resize_check_s: float = 60.0  # How often an elastic run looks for room to grow.
    gpu: bool = False  # One GPU per worker.
    max_kimg: float | None = None  # Stop after this many thousand images (default: the whole schedule).
    tick_kimg: float = 0.5  # Report interval.
    checkpoint_kimg: float | None = None  # Checkpoint interval; None: every 2 kimg or more, spaced so
    #                                       that checkpoints stop training for under 2% of its time.
    keep: int = 3  # Checkpoints kept.
    max_failures: int | None = None  # Worker-group restarts from the latest checkpoint (None: 3 on a
    #                                  cluster, 0 on a local Ray). A non-finite loss is never retried.
    stall_timeout_s: float = 600.0  # Stop when nothing has happened for this long (0: wait for ever).
    flip: bool = True  # Random horizontal flips.
    shuffle_buffer: int = 2048  # Rows the run permutes together (fewer where they pass 256 MiB).
    streams: int | None = None  # Data streams; None: the largest divisor of every batch up to MAX_STREAMS.
    cpus_per_worker: float = 1.0
    shapes_count: int = EMBEDDED_COUNT  # Size of the embedded procedural dataset.
    artifacts: str | None = None  # Local folder for samples/metrics/TensorBoard (default: beside the
    #                               checkpoints for local storage, ./runs/NAME/artifacts for s3://, then uploaded).
    console: bool = True  # One line per tick on the driver's console.
    verbose: bool = False  # Also Ray's own logs from the workers (otherwise in Ray's session log files).
    init_checkpoint: str | None = None  # Start a new run from this checkpoint (local path or s3://);
    #                                     ignored once the run has checkpoints of its own (resume).
    allow_changes: bool = False  # Continue a run whose recorded definition differs (see train.ownership).
    validate: str = "auto"  # The judge run on each checkpoint in a task of its own (see train.validation).
    validation_cpus: float = 0.0  # Its resources (a judge takes seconds: by default no CPU of its own).
    validation_gpus: float = 0.0
    validation_timeout_s: float = 300.0
    keep_best: str | None = None  # Keep the best checkpoints by this validation metric (and the newest).


def describe(opts: TrainOptions, config: Config | None = None) -> RunSpec:
    """The run ``opts`` asks for (with ``config``: that config instead of the preset's, as Tune's
    trials give), every check done before Ray starts, so bad input fails fast and clearly."""
    init, init_progress = checkpoint_info(opts.init_checkpoint) if opts.init_checkpoint else (None, None)
    if config is not None:
        cfg = config
    elif opts.preset is None and init is None:
        raise ConfigError("a preset is needed (or --init, whose checkpoint's config is then used)")
    else:
        cfg = load_config(opts.preset if opts.preset is not None else init, opts.overrides)
    if init is not None and init.model != cfg.model:  # its networks must be the ones this config builds
        diff = [f"{k}: {getattr(init.model, k)} there, {getattr(cfg.model, k)} here"
                for k in init.model.__dataclass_fields__ if getattr(init.model, k) != getattr(cfg.model, k)]
        raise ConfigError(f"--init {opts.init_checkpoint}: its model differs from preset {cfg.name!r} "
                          f"({'; '.join(diff)})")
    if opts.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {opts.workers}")
    if opts.max_workers is not None and opts.max_workers < opts.workers:
        raise ConfigError(f"--workers {opts.workers}-{opts.max_workers}: the most workers must be at least the fewest")
    if opts.resize_check_s <= 0:
        raise ConfigError(f"--resize-check must be > 0 seconds, got {opts.resize_check_s:g}")
    for flag, kimg in (("--tick-kimg", opts.tick_kimg), ("--checkpoint-kimg", opts.checkpoint_kimg)):
        if kimg is not None and not kimg > 0:
            raise ConfigError(f"{flag} must be > 0, got {kimg}")
    batches = sorted(set(cfg.schedule.batch.values()))
    if opts.streams is not None and opts.streams < 1:
        raise ConfigError(f"--data-streams must be >= 1, got {opts.streams}")
    streams = opts.streams or default_streams(batches)
    if any(b % streams for b in batches):
        raise ConfigError(f"--data-streams {streams} must divide every batch of the schedule "
                          f"({', '.join(map(str, batches))})")
    most = opts.max_workers or opts.workers
    if most > streams:
        asked = f"{opts.workers}-{most}" if opts.max_workers else f"{most}"
        raise ConfigError(f"--workers {asked}: at most the run's {streams} data streams, one or more per worker, so "
                          f"that every worker count reads the same batches (the default: the largest divisor of "
                          f"every batch, up to {MAX_STREAMS}; --data-streams sets it)")
    data = opts.data or embedded_for(cfg, opts.shapes_count)
    manifest = open_dataset(data)
    levels = dataset_levels(cfg, manifest)
    for r in levels:  # a wrong shard fails here, named, rather than inside a read task
        check_level_schemas(manifest, r)
    name = opts.name or cfg.name
    s3 = opts.storage.startswith("s3://")
    local_root, _ = storage_root(opts.storage)  # an s3:// URI is resolved (and its bucket named) now
    storage = opts.storage if s3 else local_root
    # samples and metrics: beside the checkpoints, or (s3:// storage) in a local folder then uploaded;
    # resolved here, where the command was given, not in a worker's folder
    artifacts = opts.artifacts or (str(Path("runs") / name / "artifacts") if s3 else None)
    spec = RunSpec(
        config=cfg, data=data, data_digest=dataset_digest(manifest), levels=tuple(levels), flip=opts.flip,
        shuffle_buffer=opts.shuffle_buffer, streams=streams, name=name, storage=storage,
        artifacts=str(Path(artifacts).resolve()) if artifacts else None,
        max_kimg=opts.max_kimg if opts.max_kimg is not None else total_kimg(cfg),
        start_kimg=init_progress["images_seen"] / 1000.0 if init is not None else 0.0,
        tick_kimg=opts.tick_kimg, checkpoint_kimg=opts.checkpoint_kimg, keep=opts.keep, workers=opts.workers,
        max_workers=opts.max_workers if opts.max_workers != opts.workers else None,
        resize_check_s=opts.resize_check_s,
        gpu=opts.gpu, cpus_per_worker=opts.cpus_per_worker, max_failures=max_failures(opts),
        stall_timeout_s=opts.stall_timeout_s, init_checkpoint=opts.init_checkpoint,
        validation=resolve_validation(opts.validate, cfg, manifest.source, cpus=opts.validation_cpus,
                                      gpus=opts.validation_gpus, timeout_s=opts.validation_timeout_s,
                                      keep_best=opts.keep_best),
        console=opts.console, verbose=opts.verbose, allow_changes=opts.allow_changes,
        preset=None if config is not None else opts.preset, overrides=tuple(opts.overrides))
    check_definition(spec.run_uri, RunDefinition.of(spec), spec.allow_changes)  # again under the lease
    return spec


def _held_out(spec: RunSpec, manifest):
    """Held-out images for the tuning objective, at the levels this run visits (None without one)."""
    if not spec.objective:
        return None
    from .objective import held_out_images

    cfg = spec.config
    if cfg.model.kind == "mlp":
        need = list(spec.levels)
    else:  # only the levels this run visits
        lo, hi = (stage_at(cfg, k).resolution for k in (spec.start_kimg, max(spec.start_kimg, spec.max_kimg - 1e-6)))
        need = [r for r in spec.levels if lo <= r <= hi]
    kind = spec.objective.get("kind", "recon")
    count = int(spec.objective.get("fid_real" if kind == "fid" else "held_out", 256 if kind == "fid" else 32))
    return held_out_images(manifest, need, count)


def build_trainer(spec: RunSpec, callbacks=(), worker_callbacks=()):
    """(the TorchTrainer of ``spec``, its progress board actor). ``callbacks``: Ray Train's, on the
    driver; ``worker_callbacks``: factories ``f(spec, rank, world)`` of session callbacks for each
    worker (``core.session``; the tests' fault injection), pickled to the workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from .worker import Restarts, train_loop_per_worker

    manifest = open_dataset(spec.data)
    board, board_name = new_board()
    top = spec.levels[-1]
    split = "test" if manifest.count(top, "test") >= 8 else "train"
    v = spec.validation
    storage_path, storage_fs = storage_root(spec.storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        # the spec as plain data, and what the driver read for the workers: the sample grids' reals
        # (one shard, not the split) and the objective's held-out images
        train_loop_config={"spec": spec.to_dict(), "board": board_name,
                           "fixed_reals": read_first_rows(manifest, top, split, 8)["image"],
                           "held_out": _held_out(spec, manifest), "callbacks": list(worker_callbacks)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=(spec.workers, spec.max_workers) if spec.elastic else spec.workers, use_gpu=spec.gpu,
            resources_per_worker={"CPU": spec.cpus_per_worker}, elastic_resize_monitor_interval_s=spec.resize_check_s),
        run_config=ray.train.RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.keep, checkpoint_score_attribute=v and v.keep_best,
                checkpoint_score_order=(v and v.order) or "max"),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            callbacks=[Restarts(board_name, spec.max_failures), *callbacks]),
        validation_config=ray_config(v, board_name) if v else None,
    )
    return trainer, board


def max_failures(opts: TrainOptions) -> int:
    """Restarts after a lost worker: 3 on a cluster (nodes go away) or for an elastic run (which
    shrinks by restarting), none on a local Ray otherwise (a crash there is a bug that a restart
    would repeat)."""
    if opts.max_failures is not None:
        return opts.max_failures
    return 3 if os.environ.get("RAY_ADDRESS") or (opts.max_workers or opts.workers) > opts.workers else 0


def fit(trainer, spec: RunSpec, board):
    """``trainer.fit()`` holding the run's lease, its definition recorded, bounded by the stall
    timeout; a non-finite loss (which the workers end the run on, so that Ray Train does not retry it)
    raised here."""
    import ray

    from ..core.phases import NonFiniteLossError

    with RunLease(spec.run_uri):
        changed = record_definition(spec.run_uri, RunDefinition.of(spec), spec.allow_changes)
        if changed:
            print(f"alae-ray train: continuing {spec.run_uri} with changes: {'; '.join(changed)}",
                  file=sys.stderr, flush=True)
        result = fit_watched(trainer, board, spec.stall_timeout_s,
                             echo=lambda line: print(line, file=sys.stderr, flush=True))
    failed = ray.get(board.failure.remote(), timeout=60)
    if failed:
        raise NonFiniteLossError(failed)
    return result


def run(spec: RunSpec, worker_callbacks=()) -> dict:
    """Train (or resume) and return a summary: where the checkpoint and samples are
    (``worker_callbacks``: see ``build_trainer``)."""
    start_ray("train", verbose=spec.verbose)
    gpus = 1.0 if spec.gpu else 0.0
    strict = not cluster_can_grow()
    warning = preflight(Needs(spec.workers, spec.cpus_per_worker, gpus), strict=strict)
    if spec.elastic and strict:  # a local Ray never grows: its most workers must fit now, with Ray Data's CPU
        preflight(Needs(spec.max_workers, spec.cpus_per_worker, gpus), strict=True, fewest=spec.workers)
    shared = local_paths_warning({"--data": spec.data, "--storage": None if spec.s3 else spec.storage},
                                 other_node_ips())
    for w in (warning, shared):
        if w:
            print(f"alae-ray train: warning: {w}", file=sys.stderr, flush=True)
    trainer, board = build_trainer(spec, worker_callbacks=worker_callbacks)
    result = fit(trainer, spec, board)
    ckpt = result.checkpoint
    summary = {"name": spec.name, "data": spec.data, "artifacts": spec.artifacts_shown,
               "checkpoint": ckpt.path if ckpt is not None else None,
               "kimg": (result.metrics or {}).get("kimg"), "metrics": result.metrics}
    v = spec.validation
    if v is not None and v.keep_best and result.best_checkpoints:  # sorted worst to best
        best, metrics = result.best_checkpoints[-1]
        if metrics.get(v.keep_best) == metrics.get(v.keep_best):  # not NaN: its judge ran
            summary["best"] = {"checkpoint": best.path, "metric": v.keep_best, "value": metrics[v.keep_best],
                               "kimg": metrics.get("kimg")}
    judgement = None
    try:  # the run is done and saved whatever its judge says
        judgement = judge_final(ckpt, spec.config, open_dataset(spec.data).source) if ckpt is not None else None
    except (ValueError, OSError) as exc:
        print(f"alae-ray train: warning: the final judge of {ckpt.path} failed: {exc}", file=sys.stderr, flush=True)
    summary["judge"] = judgement.to_dict() if judgement is not None else None
    return summary


JUDGE_MAX_RESOLUTION = 128  # beyond this the driver's CPU would take minutes: alae-ray eval --metric shapes


def judge_final(checkpoint, cfg: Config, source: dict):
    """The judge of a run's data on its final EMA model, at the level and fade it reached: the shapes
    judge on the procedural shapes, the digits judge on MNIST prepared from IDX files still where they
    were (None for anything else, a model the judge does not fit, or a resolution too large to judge on
    the driver's CPU in seconds)."""
    from ..core.checkpoint import load_model

    judge = data_judge(cfg, source)
    if judge is None:
        return None
    with checkpoint.as_directory() as d:
        network, cfg, progress = load_model(d, device="cpu")
    stage = stage_at(cfg, progress["images_seen"] / 1000.0)
    if stage.resolution > JUDGE_MAX_RESOLUTION:
        return None
    return judgement(network, stage, judge, source.get("path"))


def format_summary(summary: dict) -> str:
    m = summary.get("metrics") or {}
    losses = ", ".join(f"{k} {m[k]:.4f}" for k in ("loss_d", "loss_g", "loss_lae") if k in m)
    return "\n".join([
        f"trained {summary['name']}: {summary['kimg']:.2f} kimg at {m.get('resolution', '?')}px ({losses})",
        *([f"  reconstructions of {summary['judge']['summary']}"] if summary.get("judge") else []),
        f"  checkpoint: {summary['checkpoint']}",
        *([f"  best by {b['metric']} ({b['value']:.4g} at {b['kimg']:.2f} kimg): {b['checkpoint']}"]
          if (b := summary.get("best")) else []),
        f"  samples, metrics, TensorBoard: {summary['artifacts']}",
        f"  data: {summary['data']}",
    ])


def dump_summary(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items()}, indent=2, default=str)
