"""The Ray Train worker: wires the core's loop to a dataset shard, reporting and checkpoints.

Every worker runs ``train_loop_per_worker``: it builds ``ALAEPhases`` for its rank, restores the
latest checkpoint if Ray hands one over, streams its shard of the current level's dataset, and on
every tick calls ``ray.train.report`` (rank 0 attaches a checkpoint when one is due). All of the ALAE
logic is in ``alae_ray.core``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ..core.checkpoint import read_checkpoint, state_digest, write_checkpoint
from ..core.config import ModelConfig
from ..core.layers import downsample_to
from ..core.loop import Tick, train
from ..core.pacing import AUTO_BUDGET, AUTO_MIN_KIMG, CheckpointPacer
from ..core.phases import ALAEPhases, NonFiniteLossError, Shard
from ..core.pixels import from_uint8, ingest
from ..core.schedule import Stage
from ..data import stream
from ..data.ray_reader import segments_dataset
from ..data.reader import open_dataset
from ..data.storage import DatasetError
from ..infra.board import beat
from . import artifacts
from .spec import RunSpec
from .validation import ValidationLog


class ShardStream:
    """This worker's batches of the current level, epoch after epoch, from a position.

    The order is ``alae_ray.data.stream``'s: a pure function of (seed, level, epoch, rank, world), so
    a position (level, epoch, rows taken) is all a resume needs, and it starts reading there. Each
    epoch is a Ray Dataset of this rank's segments. Flips are decided per (row id, epoch).
    """

    def __init__(self, data: str, seed: int, rank: int, world: int, flip: bool, buffer: int,
                 data_resolution: int | None, model: ModelConfig, board: str | None = None,
                 device: torch.device = torch.device("cpu")):
        self.manifest = open_dataset(data)
        self.seed, self.rank, self.world, self.flip, self.buffer = seed, rank, world, flip, buffer
        self.data_resolution, self.model, self.board, self.device = data_resolution, model, board, device
        self.resolution: int | None = None
        self.epoch = 0
        self.rows: int | None = 0  # rows taken in the current epoch (None: from a checkpoint in batches)
        self._batches = 0
        self._it = None

    def state_dict(self) -> dict:
        return {"resolution": self.resolution, "epoch": self.epoch, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        # Older checkpoints counted batches; the batch size turns them into rows.
        self.resolution, self.epoch, self.rows = state["resolution"], state["epoch"], state.get("rows")
        self._batches, self._it = state.get("batches", 0), None

    def _open(self, n: int) -> None:
        res, m = self.resolution, self.manifest
        plan = stream.plan_epoch(stream.blocks(m, res), seed=self.seed, resolution=res, epoch=self.epoch,
                                 rank=self.rank, world=self.world,
                                 window=stream.window_rows(self.buffer, m.channels, res))
        if plan.rows < n:
            raise DatasetError(f"{m.uri}: level {res}px has {m.count(res)} training images, {plan.rows} for each of "
                               f"{self.world} workers: fewer than a batch of {n}")
        segments, _ = plan.from_row(self.rows)
        chunks = segments_dataset(m, res, segments).iter_batches(batch_size=None, batch_format="numpy",
                                                                 prefetch_batches=2)
        self._it = stream.batches(plan, self.rows, chunks, n)

    def __call__(self, stage: Stage, n: int) -> torch.Tensor:
        res = self.data_resolution or stage.resolution
        if res != self.resolution:  # a new level starts its own epochs
            self.resolution, self.epoch, self.rows, self._it = res, 0, 0, None
        if self.rows is None:
            self.rows = self._batches * n
        while True:
            if self._it is None:
                beat(self.board, f"rank {self.rank}: the first batch of epoch {self.epoch} of the {res}px data "
                                 f"(Ray Data's read tasks need a free CPU)")
                self._open(n)
            batch = next(self._it, None)
            if batch is not None:
                beat(self.board, f"rank {self.rank}: training on {res}px batches")
                break
            self.epoch, self.rows, self._it = self.epoch + 1, 0, None
        self.rows += n
        return ingest(batch["image"], batch["id"], self.epoch, self.model, self.device, self.flip)


def _gather(obj) -> list:
    """``obj`` from every rank, in rank order (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _mean_over_ranks(losses: dict[str, float]) -> dict[str, float]:
    """Each loss averaged over the workers: the global batch's value, not rank 0's slice of it."""
    per_rank = _gather(losses)
    return {k: sum(r[k] for r in per_rank) / len(per_rank) for k in losses}


def _gather_rng(phases: ALAEPhases) -> dict[str, torch.Tensor]:
    """Every rank's own RNG state (G's noise), gathered for rank 0's checkpoint."""
    mine = {"cpu": torch.get_rng_state()}
    if phases.cuda:
        mine["cuda"] = torch.cuda.get_rng_state(phases.device)
    return {f"rng.rank{r}.{k}": v for r, s in enumerate(_gather(mine)) for k, v in s.items()}


def _restore_rng(tensors: dict, phases: ALAEPhases) -> None:
    rank = phases.shard.rank
    if f"rng.rank{rank}.cpu" in tensors:
        torch.set_rng_state(tensors[f"rng.rank{rank}.cpu"])
    if phases.cuda and f"rng.rank{rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.rank{rank}.cuda"], phases.device)


def train_loop_per_worker(config: dict) -> None:
    """``config``: the run's ``RunSpec`` as a dict, its progress board's name, and what the driver
    read for the workers (``fixed_reals``, ``held_out``)."""
    spec = RunSpec.from_dict(config["spec"])
    cfg = spec.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(spec.threads)
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # the segments' order is the stream's
    data_context.enable_progress_bars = False  # one console line per tick instead
    phases = ALAEPhases(cfg, device, Shard(rank, world))
    board = config.get("board")
    beat(board, f"rank {rank} of {world} started on {socket.gethostname()}")
    data = ShardStream(spec.data, cfg.train.seed, rank, world, spec.flip, spec.shuffle_buffer,
                       spec.data_resolution, cfg.model, board, device)
    out_dir = spec.artifacts_dir
    fixed: dict[str, torch.Tensor] = {}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and spec.init_checkpoint:  # a new run started from another run's checkpoint
        progress = _init_from(spec.init_checkpoint, phases, device, rank, out_dir)
        if spec.init_data_position and "data" in progress:
            data.load_state_dict(progress["data"])
    if checkpoint is not None:
        tensors, progress = _read_resumable(checkpoint, spec.run_uri, device, board)
        phases.load(tensors, progress)
        _restore_rng(tensors, phases)
        data.load_state_dict(progress["data"])
        fixed = {k[len("fixed."):]: v for k, v in tensors.items() if k.startswith("fixed.")}
        if rank == 0:
            print(f"resumed from checkpoint at {phases.kimg:.2f} kimg (iteration {phases.iteration})", flush=True)
    # the grids' z, kept in every checkpoint so that a resumed run's grids compare with the earlier ones
    fixed.setdefault("z", torch.randn(16, cfg.model.latent_size, generator=torch.Generator().manual_seed(1234)))

    if rank == 0 and spec.artifacts_upload:
        artifacts.restore_log(out_dir, spec.artifacts_upload)  # a restart elsewhere: append, not overwrite
    log = artifacts.MetricsLog(out_dir) if rank == 0 else None
    evaluator = None
    if rank == 0 and spec.objective:  # tuning: an objective on a fixed held-out batch every tick
        from .objective import Evaluator

        evaluator = Evaluator(spec.objective, config["held_out"], cfg.model, device)
    placement = _gather({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                         "host": socket.gethostname(), "pid": os.getpid(), "device": str(device)})
    if rank == 0:  # where each worker ran: for people debugging a cluster, and for the cluster test
        (out_dir / "workers.json").write_text(json.dumps(placement, indent=2))
    fixed_kimg = spec.checkpoint_kimg  # None: paced automatically
    pacer = CheckpointPacer(max(1, round((fixed_kimg or AUTO_MIN_KIMG) * 1000)), phases.images_seen,
                            None if fixed_kimg else AUTO_BUDGET)
    since = [time.perf_counter(), phases.images_seen]  # when and where the last checkpoint ended
    max_kimg = spec.max_kimg
    stop = round(max_kimg * 1000)
    fail_at = spec.fail_at_kimg  # for the fault-tolerance test: one crash, once per run
    validation = ValidationLog(spec.validation, board, log) if rank == 0 else None
    t0 = time.perf_counter()

    def on_tick(tick: Tick) -> None:
        s = tick.stage
        metrics = {"kimg": tick.kimg, "iteration": tick.iteration, "level": s.level, "resolution": s.resolution,
                   "alpha": s.alpha, "batch": s.batch, "lr": s.lr, **_mean_over_ranks(tick.losses),
                   "sec_per_kimg": tick.sec_per_kimg, "images_per_sec": tick.images_per_sec,
                   "epoch": data.epoch, "wall_s": time.perf_counter() - t0}
        if evaluator is not None:
            metrics.update(evaluator(phases.ema, s))
        if phases.cuda:
            metrics["gpu_mem_gib"] = torch.cuda.max_memory_allocated(phases.device) / 2**30
        due = pacer.due(tick.images_seen) or tick.images_seen >= stop
        c0 = time.perf_counter()
        rng = _gather_rng(phases) if due else {}
        if rank == 0:
            validation.log_new()
            log.write(metrics)
            # the driver prints it: one line per tick, with or without Ray's own worker logs
            beat(board, f"training at {tick.kimg:.3f} kimg ({s.resolution}px)",
                 say=artifacts.console_line(metrics, max_kimg) if spec.console else None)
        if due:
            ckpt = None
            if rank == 0:  # written to local disk now, uploaded by Ray Train in the background
                tensors = {**phases.tensors(), **rng, **{f"fixed.{k}": v for k, v in fixed.items()}}
                path = write_checkpoint(Path(tempfile.gettempdir()) / f"alae-ray-checkpoint-{uuid.uuid4().hex}", cfg,
                                        tensors, {**phases.progress(), "data": data.state_dict(), "kimg": tick.kimg})
                ckpt = ray.train.Checkpoint.from_directory(str(path))
            # ASYNC: training goes on while the checkpoint uploads (the local copy is deleted after);
            # Ray Train waits for the last upload before the run ends, and validates it in a task of its own.
            reported, validate = validation.request(metrics, tick.kimg, s.resolution) if rank == 0 else (metrics, False)
            ray.train.report(reported, checkpoint=ckpt, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                             validation=validate)
            if rank == 0 and tick.images_seen >= stop:
                validation.wait_for_all()  # the last checkpoint's judge in metrics.jsonl before the upload
            if rank == 0:  # after the checkpoint: a failure here is a warning, never a lost checkpoint
                _publish(phases, s, fixed, out_dir, tick.kimg, config["fixed_reals"], spec.artifacts_upload,
                         log if tick.images_seen >= stop else None, board)
            # Rank 0 stood still longest (the write, samples, artifacts): its figures pace every rank.
            now = time.perf_counter()
            per_image = (c0 - since[0]) / max(1, tick.images_seen - since[1])
            pacer.next_at = _gather(pacer.checkpointed(tick.images_seen, now - c0, per_image))[0]
            since[:] = [time.perf_counter(), tick.images_seen]
        else:
            ray.train.report(metrics)
        if fail_at is not None and tick.kimg >= fail_at and rank == world - 1 and not _marker(out_dir).exists():
            _marker(out_dir).parent.mkdir(parents=True, exist_ok=True)
            _marker(out_dir).write_text(f"killed at {tick.kimg}\n")
            os._exit(1)  # a hard crash of one worker process, not an exception

    try:
        train(phases, data, max_kimg=max_kimg, tick_kimg=spec.tick_kimg, on_tick=on_tick)
    except NonFiniteLossError as exc:
        # Not an exception for Ray Train to retry (a restart from the last checkpoint would meet the
        # same NaN): every rank stops here, and the driver raises it (the board carries the message).
        if rank == 0:
            (out_dir / "FAILED.txt").write_text(f"{exc}\n")
            beat(board, str(exc), failed=True)
            log.close()
        return
    if rank == 0:
        log.close()


def _init_from(uri: str, phases: ALAEPhases, device, rank: int, out_dir: Path) -> dict:
    """Networks, EMA, optimizer moments and counters from a checkpoint of another run (per-level
    tuning, population members); returns its progress, whose data position only the caller can
    judge valid (the same dataset and batch)."""
    from ..data.storage import resolve

    loc = resolve(uri)
    with ray.train.Checkpoint(loc.path, filesystem=loc.fs).as_directory() as d:
        _, tensors, progress = read_checkpoint(Path(d), device)
    phases.load(tensors, progress)
    _restore_rng(tensors, phases)
    if rank == 0:
        print(f"started from {uri} at {phases.kimg:.2f} kimg (iteration {phases.iteration})", flush=True)
        # what was loaded, for provenance (and the population tests: an exploit copies exactly)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "started_from.json").write_text(json.dumps(
            {"checkpoint": uri, "images_seen": phases.images_seen, "state_sha256": state_digest(phases.tensors())}))
    return progress


def _marker(out_dir: Path) -> Path:
    return out_dir / "fault-injected.txt"


def _publish(phases: ALAEPhases, stage: Stage, fixed: dict, out_dir: Path, kimg: float, reals, upload: str | None,
             final_log, board: str | None) -> None:
    """Rank 0, after a checkpoint: the grids, the loss plot at the end, the artifacts' upload. Each is
    tried a few times; one that still fails is a console warning and is tried again at the next
    checkpoint (the upload sends whatever it has not sent yet)."""
    def warn(line: str) -> None:
        beat(board, line, say=f"warning: {line}")

    artifacts.attempt("writing the sample grids", lambda: _write_samples(phases, stage, fixed, out_dir, kimg, reals),
                      warn)
    if final_log is not None:
        artifacts.attempt("plotting the losses", lambda: artifacts.plot_losses(final_log.path, out_dir / "losses.png"),
                          warn)
    if upload:
        artifacts.attempt(f"uploading the artifacts to {upload}", lambda: artifacts.upload(out_dir, upload), warn)


def _read_resumable(checkpoint, run_uri: str, device, board: str | None) -> tuple[dict, dict]:
    """(tensors, progress) of the checkpoint Ray Train hands over or, where any rank cannot read it
    (a truncated upload, a lost object), of the newest earlier one in the run directory every rank
    can read, with a warning on the console. Every rank takes the same one."""
    from ..core.checkpoint import CheckpointError
    from ..data.storage import resolve
    from ..infra.checkpoints import run_checkpoints

    tried, errors = [], []
    candidate = checkpoint
    while True:
        try:
            with candidate.as_directory() as d:
                _, tensors, progress = read_checkpoint(Path(d), device)
            error = None
        except (CheckpointError, OSError) as exc:
            tensors, progress, error = None, None, f"{exc}".replace("\n", " ")
        failed = [e for e in _gather(error) if e]
        name = Path(candidate.path).name
        if not failed:
            if tried:
                warning = (f"checkpoint {tried[0]} is unreadable ({errors[0]}); resumed from the newest earlier "
                           f"readable one, {name}")
                beat(board, warning, say=f"warning: {warning}")
            return tensors, progress
        tried.append(name)
        errors.append(failed[0])
        older = [uri for uri in run_checkpoints(run_uri) if uri.rstrip("/").rsplit("/", 1)[-1] not in tried]
        if not older:
            raise CheckpointError(f"run {run_uri}: no readable checkpoint to resume from ("
                                  + "; ".join(f"{n}: {e}" for n, e in zip(tried, errors)) + ")")
        loc = resolve(_gather(older[0])[0])  # rank 0's choice, should the ranks' listings differ
        candidate = ray.train.Checkpoint(loc.path, filesystem=loc.fs)


def _write_samples(phases: ALAEPhases, stage: Stage, fixed: dict, out_dir: Path, kimg: float, reals) -> None:
    """Grids from the EMA model: fixed z (kept in the checkpoint) and fixed held-out ``reals`` (uint8
    [n, C, R, R] at the top resolution, from the driver)."""
    if reals is None:
        return
    x = from_uint8(torch.from_numpy(np.asarray(reals)), phases.cfg.model).to(phases.device)
    x = x.flatten(1) if phases.cfg.model.kind == "mlp" else downsample_to(x, stage.resolution)
    t = phases.cfg.train
    artifacts.sample_grids(phases.ema, stage.level, stage.alpha, fixed["z"].to(phases.device), x, out_dir,
                           tag=f"{kimg:08.2f}kimg", psi=t.truncation_psi, cutoff=t.truncation_cutoff)
