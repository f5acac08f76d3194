"""The Ray Train worker: the core's training session on a dataset shard, reporting to Ray Train.

Every worker runs ``train_loop_per_worker``: it builds a ``Session`` for its rank, restores the
latest checkpoint if Ray hands one over, streams its shard of the current level's dataset, and adds
what is Ray's: the rank gathers, ``ray.train.report`` each tick and rank 0's checkpoint hand-off
(``Report``). All of the ALAE logic, the checkpoint pacing and the snapshots are in ``alae_ray.core``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
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
from ..core.pacing import AUTO_BUDGET, AUTO_MIN_KIMG, CheckpointPacer
from ..core.phases import ALAEPhases, NonFiniteLossError, Shard
from ..core.pixels import from_uint8, ingest
from ..core.schedule import Stage, split_streams
from ..core.session import Session, Snapshot, Tick
from ..data import stream
from ..data.ray_reader import segments_dataset
from ..data.reader import open_dataset
from ..data.storage import DatasetError
from ..infra.board import beat, group_started
from . import artifacts
from .spec import RunSpec
from .validation import ValidationLog


class ShardStream:
    """This worker's batches of the current level, epoch after epoch, from a position.

    The order is ``alae_ray.data.stream``'s: the run's ``streams`` data streams, a pure function of
    (seed, level, epoch) each, this worker serving its share of them; so a position (level, epoch,
    rows taken from each stream) is all a resume needs, at any worker count up to the streams,
    and it starts reading there. Each epoch is a Ray Dataset of this worker's segments. Flips are
    decided per (row id, epoch).
    """

    def __init__(self, data: str, seed: int, rank: int, world: int, streams: int, flip: bool, buffer: int,
                 data_resolution: int | None, model: ModelConfig, board: str | None = None,
                 device: torch.device = torch.device("cpu")):
        self.manifest = open_dataset(data)
        self.seed, self.rank, self.streams, self.flip, self.buffer = seed, rank, streams, flip, buffer
        self.mine = split_streams(streams, rank, world)
        self.data_resolution, self.model, self.board, self.device = data_resolution, model, board, device
        self.resolution: int | None = None
        self.epoch = 0
        self.rows = 0  # rows taken from each stream in the current epoch
        self._it = None

    def state_dict(self) -> dict:
        return {"resolution": self.resolution, "epoch": self.epoch, "rows": self.rows, "streams": self.streams}

    def load_state_dict(self, state: dict) -> None:
        self.resolution, self.epoch, self.rows, self._it = state["resolution"], state["epoch"], state["rows"], None
        if state.get("streams") != self.streams:  # another order (an older checkpoint): this epoch from its start
            beat(self.board, "resuming", say=f"warning: the checkpoint's data position is in another order (data "
                                             f"streams: {state.get('streams', 'none')}); epoch {self.epoch} of the "
                                             f"{self.resolution}px data starts again" if self.rank == 0 else None)
            self.rows = 0

    def _open(self, n: int) -> None:
        res, m = self.resolution, self.manifest
        window, level_blocks = stream.window_rows(self.buffer, m.channels, res, self.streams), stream.blocks(m, res)
        work = stream.WorkerPlan(tuple(
            stream.plan_epoch(level_blocks, seed=self.seed, resolution=res, epoch=self.epoch, stream=v,
                              streams=self.streams, window=window) for v in self.mine))
        if work.rows < n // len(self.mine):
            raise DatasetError(f"{m.uri}: level {res}px has {m.count(res)} training images, {work.rows} for each of "
                               f"{self.streams} data streams: fewer than their share of a batch, {n // len(self.mine)}")
        chunks = segments_dataset(m, res, [s for _, s in work.reads(self.rows)]).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2)
        self._it = work.batches(self.rows, chunks, n)

    def __call__(self, stage: Stage, part: slice) -> torch.Tensor:
        res, n = self.data_resolution or stage.resolution, part.stop - part.start
        if res != self.resolution:  # a new level starts its own epochs
            self.resolution, self.epoch, self.rows, self._it = res, 0, 0, None
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
        self.rows += n // len(self.mine)
        return ingest(batch["image"], batch["id"], self.epoch, self.model, self.device, self.flip)


def _gather(obj) -> list:
    """``obj`` from every rank, in rank order (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train_loop_per_worker(config: dict) -> None:
    """``config``: the run's ``RunSpec`` as a dict, its progress board's name, what the driver read
    for the workers (``fixed_reals``, ``held_out``) and ``callbacks``: factories
    ``f(spec, rank, world) -> session callback or None`` that the tests pass in (fault injection)."""
    spec = RunSpec.from_dict(config["spec"])
    cfg = spec.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(spec.threads)
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # the segments' order is the stream's
    data_context.enable_progress_bars = False  # one console line per tick instead
    phases = ALAEPhases(cfg, device, Shard(rank, world, spec.streams))
    board = config.get("board")
    beat(board, f"rank {rank} of {world} started on {socket.gethostname()}")
    data = ShardStream(spec.data, cfg.train.seed, rank, world, spec.streams, spec.flip, spec.shuffle_buffer,
                       spec.data_resolution, cfg.model, board, device)
    out_dir = spec.artifacts_dir
    session = Session(phases, data, max_kimg=spec.max_kimg, tick_kimg=spec.tick_kimg, gather=_gather)

    before = group_started(board, world) if rank == 0 else None  # the group this one replaces
    checkpoint = _latest(ray.train.get_checkpoint(), spec.run_uri, board, rank)
    if checkpoint is None and spec.init_checkpoint:  # a new run started from another run's checkpoint
        _init_from(spec.init_checkpoint, session, rank, out_dir, data=spec.init_data_position)
    if checkpoint is not None:
        tensors, progress = _read_resumable(checkpoint, spec.run_uri, device, board)
        session.restore(tensors, progress)
        before = before or progress.get("workers", world)  # a new driver: the group that wrote the checkpoint
        change = "" if before == world else (f"; the worker group {'shrank' if world < before else 'grew'} from "
                                             f"{before} to {world}")
        beat(board, "resuming", say=f"resumed from the checkpoint at {phases.kimg:.3f} kimg (iteration "
                                    f"{phases.iteration}) with {world} worker(s){change}" if rank == 0 else None)
    fixed_kimg = spec.checkpoint_kimg  # None: paced automatically
    session.pacer = CheckpointPacer(max(1, round((fixed_kimg or AUTO_MIN_KIMG) * 1000)), phases.images_seen,
                                    None if fixed_kimg else AUTO_BUDGET)
    # the grids' z, kept in every checkpoint so that a resumed run's grids compare with the earlier ones
    session.fixed.setdefault("z", torch.randn(16, cfg.model.latent_size, generator=torch.Generator().manual_seed(1234)))

    placement = _gather({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                         "host": socket.gethostname(), "pid": os.getpid(), "device": str(device)})
    report = Report(spec, session, board, config["fixed_reals"])
    if rank == 0:  # where each worker ran: for people debugging a cluster, and for the cluster test
        (out_dir / "workers.json").write_text(json.dumps(placement, indent=2))
        if spec.objective:  # tuning: an objective on a fixed held-out batch every tick, reported with it
            from .objective import Evaluator

            evaluator = Evaluator(spec.objective, config["held_out"], cfg.model, device)
            session.callbacks.append(lambda tick, _: tick.metrics.update(evaluator(phases.ema, tick.stage)))
    session.callbacks.append(report)
    session.callbacks.extend(c for c in (f(spec, rank, world) for f in config.get("callbacks", ())) if c)
    try:
        session.run()
    except NonFiniteLossError as exc:
        # Not an exception for Ray Train to retry (a restart from the last checkpoint would meet the
        # same NaN): every rank stops here, and the driver raises it (the board carries the message).
        if rank == 0:
            (out_dir / "FAILED.txt").write_text(f"{exc}\n")
            beat(board, str(exc), failed=True)
    finally:
        report.close()


class Report:
    """The session callback of a worker: each tick's metrics to Ray Train; when a snapshot is due,
    rank 0 writes it to local disk and hands it to Ray Train (uploaded in the background, then
    validated in a task of its own), and afterwards writes the grids and uploads the artifacts.
    Rank 0 also keeps the metrics log and says each tick on the driver's console."""

    def __init__(self, spec: RunSpec, session: Session, board: str | None = None, fixed_reals=None):
        self.spec, self.session, self.board, self.reals = spec, session, board, fixed_reals
        self.lead = session.rank == 0
        self.log = self.validation = None
        if self.lead:
            out_dir = spec.artifacts_dir
            if spec.artifacts_upload:
                artifacts.restore_log(out_dir, spec.artifacts_upload)  # a restart elsewhere: append, not overwrite
            self.log = artifacts.MetricsLog(out_dir)
            self.validation = ValidationLog(spec.validation, board, self.log)

    def __call__(self, tick: Tick, snapshot: Snapshot | None) -> None:
        spec, metrics = self.spec, tick.metrics
        if self.lead:
            self.validation.log_new()
            self.log.write(metrics)
            # the driver prints it: one line per tick, with or without Ray's own worker logs
            beat(self.board, f"training at {tick.kimg:.3f} kimg ({tick.stage.resolution}px)",
                 say=artifacts.console_line(metrics, spec.max_kimg) if spec.console else None)
        if snapshot is None:
            ray.train.report(metrics)
            return
        ckpt, validate = None, False
        if self.lead:  # written to local disk now, uploaded by Ray Train in the background
            path = write_checkpoint(Path(tempfile.gettempdir()) / f"alae-ray-checkpoint-{uuid.uuid4().hex}",
                                    spec.config, snapshot.tensors, snapshot.progress)
            ckpt = ray.train.Checkpoint.from_directory(str(path))
            metrics, validate = self.validation.request(metrics, tick.kimg, tick.stage.resolution)
        # ASYNC: training goes on while the checkpoint uploads (the local copy is deleted after);
        # Ray Train waits for the last upload before the run ends.
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         validation=validate)
        if self.lead:
            if tick.final:
                self.validation.wait_for_all()  # the last checkpoint's judge in metrics.jsonl before the upload
            # after the checkpoint: a failure here is a warning, never a lost checkpoint
            _publish(self.session, tick, spec.artifacts_dir, self.reals, spec.artifacts_upload,
                     self.log if tick.final else None, self.board)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class Restarts(ray.train.UserCallback):
    """On Ray Train's controller: say on the driver's console when the worker group fails (a lost
    node, a crashed worker) and whether it is restarted from the latest checkpoint; the restarted
    rank 0 then says at what kimg and with how many workers it goes on."""

    def __init__(self, board: str, max_failures: int):
        self.board, self.max_failures, self.failures = board, max_failures, 0

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        self.failures += 1
        rank, exc = min(worker_exceptions.items())
        cause = (str(exc).strip().splitlines() or [""])[0][:240]
        left = self.max_failures - self.failures if self.max_failures >= 0 else None  # after this restart
        then = ("; not restarted (--max-failures)" if left is not None and left < 0 else
                "; restarting it from the latest checkpoint" + (f" ({left} restarts left)" if left is not None else ""))
        line = f"the worker group failed (rank {rank}: {type(exc).__name__}: {cause}){then}"
        beat(self.board, line, say=f"warning: {line}")


def _init_from(uri: str, session: Session, rank: int, out_dir: Path, data: bool) -> None:
    """Networks, EMA, optimizer moments and counters from a checkpoint of another run (per-level
    tuning, population members); its data position with ``data``, which only the caller can judge
    valid (the same dataset and batch)."""
    from ..data.storage import resolve

    loc = resolve(uri)
    with ray.train.Checkpoint(loc.path, filesystem=loc.fs).as_directory() as d:
        _, tensors, progress = read_checkpoint(Path(d), session.phases.device)
    session.restore(tensors, progress, data=data)
    phases = session.phases
    if rank == 0:
        print(f"started from {uri} at {phases.kimg:.2f} kimg (iteration {phases.iteration})", flush=True)
        # what was loaded, for provenance (and the population tests: an exploit copies exactly)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "started_from.json").write_text(json.dumps(
            {"checkpoint": uri, "images_seen": phases.images_seen, "state_sha256": state_digest(phases.tensors())}))


def _publish(session: Session, tick: Tick, out_dir: Path, reals, upload: str | None, final_log,
             board: str | None) -> None:
    """Rank 0, after a checkpoint: the grids, the loss plot at the end, the artifacts' upload. Each is
    tried a few times; one that still fails is a console warning and is tried again at the next
    checkpoint (the upload sends whatever it has not sent yet)."""
    def warn(line: str) -> None:
        beat(board, line, say=f"warning: {line}")

    artifacts.attempt("writing the sample grids", lambda: _write_samples(session, tick, out_dir, reals), warn)
    if final_log is not None:
        artifacts.attempt("plotting the losses", lambda: artifacts.plot_losses(final_log.path, out_dir / "losses.png"),
                          warn)
    if upload:
        artifacts.attempt(f"uploading the artifacts to {upload}", lambda: artifacts.upload(out_dir, upload), warn)


def _latest(checkpoint, run_uri: str, board: str | None, rank: int):
    """The checkpoint to resume from: Ray Train's, or a newer complete one in the run directory. Ray
    Train registers an asynchronous upload only when the workers report after it, so a node lost in
    between would otherwise cost a checkpoint interval (or the whole run, before the first one)."""
    from ..data.storage import resolve
    from ..infra.checkpoints import run_checkpoints

    newest = _gather(run_checkpoints(run_uri)[:1] if rank == 0 else None)[0]  # one listing, rank 0's, for all
    if not newest or (checkpoint is not None and Path(checkpoint.path).name == Path(newest[0]).name):
        return checkpoint
    name = Path(newest[0]).name
    line = (f"checkpoint {name} was uploaded but not registered with Ray Train before the worker group "
            f"stopped; resuming from it" + (f" rather than {Path(checkpoint.path).name}" if checkpoint else ""))
    beat(board, line, say=f"warning: {line}" if rank == 0 else None)
    loc = resolve(newest[0])
    return ray.train.Checkpoint(loc.path, filesystem=loc.fs)


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


def _write_samples(session: Session, tick: Tick, out_dir: Path, reals) -> None:
    """Grids from the EMA model: fixed z (kept in the checkpoint) and fixed held-out ``reals`` (uint8
    [n, C, R, R] at the top resolution, from the driver)."""
    if reals is None:
        return
    phases, stage = session.phases, tick.stage
    x = from_uint8(torch.from_numpy(np.asarray(reals)), phases.cfg.model).to(phases.device)
    x = x.flatten(1) if phases.cfg.model.kind == "mlp" else downsample_to(x, stage.resolution)
    t = phases.cfg.train
    artifacts.sample_grids(phases.ema, stage.level, stage.alpha, session.fixed["z"].to(phases.device), x, out_dir,
                           tag=f"{tick.kimg:08.2f}kimg", psi=t.truncation_psi, cutoff=t.truncation_cutoff)
