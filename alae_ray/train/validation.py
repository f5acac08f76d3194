"""Validation during training, off the trainers: the run's judge on each checkpoint as its own Ray task.

Ray Train's asynchronous checkpoint validation (``ValidationConfig``, ``ray.train.report(validation=...)``)
runs ``validate`` on a checkpoint once it is stored, while the workers go on training; Ray Train merges
the returned metrics into that checkpoint's metrics (which ``CheckpointConfig``'s score attribute ranks:
``--keep-best``). The task also posts its record to the run's progress board: the driver prints it, and
rank 0 writes it into ``metrics.jsonl`` and TensorBoard at its next tick, so one process writes those.

The judges are ``alae_ray.judges``: *shapes* on the procedural shapes (any level), *digits* on MNIST
prepared from IDX files (32x32 only). A validation that fails is logged with its checkpoint's name and
never stops training (Ray Train marks the checkpoint VALIDATION_FAILED and goes on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Config, ConfigError
from ..infra.board import beat, logged, post, records

JUDGES = ("auto", "shapes", "digits", "off")

# Every metric a judge returns, and whether lower is better (for --keep-best).
METRICS = {
    "shapes": {"val_position_px": "min", "val_hue_deg": "min", "val_scale_px": "min", "val_rotation_deg": "min",
               "val_shape_pct": "max", "val_left": "min"},  # left: the blind guess's error left, all factors
    "digits": {"val_recon_pct": "max", "val_balance_pts": "min", "val_frechet": "min"},
}


@dataclass(frozen=True)
class Validation:
    """What a run validates and how: resolved by the driver from the options, the config and the data."""

    judge: str  # "shapes" or "digits"
    source: str | None  # the digits judge's IDX folder
    resolutions: tuple[int, ...] | None  # levels it can judge (None: every level)
    cpus: float
    gpus: float
    timeout_s: float
    keep_best: str | None  # a metric of METRICS[judge]: Ray Train keeps the best checkpoints by it

    @property
    def order(self) -> str | None:
        return METRICS[self.judge][self.keep_best] if self.keep_best else None

    def judges(self, resolution: int) -> bool:
        return self.resolutions is None or resolution in self.resolutions


def _mnist_here(source: dict) -> bool:
    """Whether a dataset was prepared from MNIST IDX files that are still where they were."""
    folder = source.get("path")
    return source.get("kind") == "mnist-idx" and bool(folder) and Path(folder).is_dir()


def data_judge(cfg: Config, source: dict) -> str | None:
    """The judge of a run's data where its model fits it: "shapes" on the procedural shapes, "digits" on
    MNIST prepared from IDX files still where they were; None for anything else."""
    from ..judges import digits, shapes

    if source.get("kind") == "shapes" and shapes.fits(cfg.model):
        return "shapes"
    return "digits" if _mnist_here(source) and digits.fits(cfg.model) else None


def judgement(network, stage, judge: str, source: str | None):
    """The judge's judgement of a core ``ALAE`` at ``stage`` (its level and fade; the digits judge reads
    the IDX folder ``source``); None at a level the judge cannot read (digits below 32x32)."""
    from ..judges import digits, shapes

    if judge == "shapes":
        return shapes.judge(shapes.network_reconstructor(network, stage.level, stage.alpha), stage.resolution)
    if network.cfg.kind == "style" and stage.resolution != digits.RESOLUTION:
        return None
    return digits.judge_network(network, stage.level, source)


def resolve_validation(judge: str, cfg: Config, source: dict, *, cpus: float = 0.0, gpus: float = 0.0,
                       timeout_s: float = 300.0, keep_best: str | None = None) -> Validation | None:
    """The ``Validation`` of a run (None: off). ``auto`` picks the data's judge where the model fits
    it, else none; a judge named explicitly that does not fit is a ConfigError in one line."""
    from ..judges import digits, shapes

    if judge not in JUDGES:
        raise ConfigError(f"--validate must be one of {', '.join(JUDGES)}, got {judge!r}")
    if judge == "auto":
        judge = data_judge(cfg, source) or "off"
        if judge == "off" and keep_best:
            raise ConfigError(f"--keep-best {keep_best}: this run has no judge (the shapes judge validates the "
                              "procedural shapes, the digits judge MNIST prepared from IDX files)")
    if judge == "off":
        return None
    if judge == "shapes" and not shapes.fits(cfg.model):
        raise ConfigError(f"--validate shapes: the shapes judge needs a StyleALAE on RGB images; preset "
                          f"{cfg.name!r} is a {cfg.model.kind} ALAE on {cfg.model.channels}-channel images")
    if judge == "digits":
        if not digits.fits(cfg.model):
            raise ConfigError(f"--validate digits: the digits judge reads one-channel 28x28 or 32x32 digits; preset "
                              f"{cfg.name!r} makes {cfg.model.channels}-channel {cfg.model.max_resolution}px images")
        if not _mnist_here(source):
            raise ConfigError("--validate digits: the dataset was not prepared from MNIST IDX files that are still "
                              "where they were (the judge reads their labels)")
    if keep_best and keep_best not in METRICS[judge]:
        raise ConfigError(f"--keep-best {keep_best!r}: the {judge} judge reports {', '.join(METRICS[judge])}")
    if cpus < 0 or gpus < 0 or not timeout_s > 0:
        raise ConfigError(f"validation resources must be >= 0 and its timeout > 0 (got --validation-cpus {cpus}, "
                          f"--validation-gpus {gpus}, --validation-timeout {timeout_s})")
    resolutions = (digits.RESOLUTION,) if judge == "digits" and cfg.model.kind == "style" else None
    return Validation(judge, source.get("path") if judge == "digits" else None, resolutions, cpus, gpus, timeout_s,
                      keep_best)


def ray_config(v: Validation, board: str):
    """Ray Train's ``ValidationConfig`` for ``validate`` with these settings."""
    import ray.train

    kwargs = {"judge": v.judge, "source": v.source, "board": board, "threads": max(1, int(v.cpus))}
    return ray.train.ValidationConfig(
        fn=validate, task_config=ray.train.ValidationTaskConfig(fn_kwargs=kwargs, timeout_s=v.timeout_s),
        # A judge takes seconds: by default it asks for no CPU of its own, so that a 2-CPU machine
        # (one worker, one for Ray Data) can run it; give it CPUs or a GPU on a larger cluster.
        ray_remote_kwargs={"num_cpus": v.cpus, "num_gpus": v.gpus, "max_retries": 0})


def judge_checkpoint(directory: str | Path, judge: str, source: str | None, device: str = "cpu") -> dict | None:
    """The judge's metrics of a checkpoint's EMA model at the level and fade it reached, flat
    (``METRICS[judge]`` plus ``kimg`` and ``val_resolution``); None at a level the judge cannot read."""
    from ..core.checkpoint import load_model
    from ..core.schedule import stage_at

    network, cfg, progress = load_model(directory, device=device)
    kimg = progress["images_seen"] / 1000.0
    stage = stage_at(cfg, kimg)
    j = judgement(network, stage, judge, source)
    if j is None:
        return None
    out = {"kimg": kimg, "val_resolution": stage.resolution}
    if judge == "shapes":
        s = {f.factor: f.reconstructions for f in j.scores}
        return {**out, "val_position_px": s["position"], "val_hue_deg": s["hue"], "val_scale_px": s["scale"],
                "val_rotation_deg": s["rotation"], "val_shape_pct": s["shape"], "val_left": j.left}
    return {**out, "val_recon_pct": j.reconstruction, "val_balance_pts": j.balance, "val_frechet": j.frechet}


def console_line(record: dict) -> str:
    values = "  ".join(f"{k[4:]}={v:.4g}" for k, v in record.items()
                       if k.startswith("val_") and k != "val_resolution" and isinstance(v, (int, float)))
    return (f"validated {record['checkpoint']} ({record['kimg']:.2f} kimg, {record['val_resolution']}px, "
            f"{record['val_seconds']:.1f} s): {values}")


def validate(checkpoint, *, judge: str, kimg: float = 0.0, source: str | None = None, board: str | None = None,
             threads: int = 1) -> dict:
    """Ray Train's validation function: the judge's metrics of ``checkpoint`` (a ``ray.train.Checkpoint``
    written at ``kimg``). It posts one record to the progress board (rank 0 logs it; the driver prints
    it): the metrics, or the error, which it then raises (Ray Train marks the checkpoint and goes on)."""
    import torch

    torch.set_num_threads(threads)
    name = Path(checkpoint.path).name
    t0 = time.perf_counter()
    try:
        with checkpoint.as_directory() as d:
            metrics = judge_checkpoint(d, judge, source, "cuda" if torch.cuda.is_available() else "cpu")
        if metrics is None:
            raise ValueError(f"the {judge} judge cannot read this checkpoint's level")
    except Exception as exc:
        line = f"validation of {name} ({kimg:.2f} kimg) failed: {type(exc).__name__}: {exc}".replace("\n", " ")
        post(board, {"kimg": kimg, "checkpoint": name, "val_error": line})
        beat(board, line, say=f"warning: {line}")
        raise
    record = {**metrics, "checkpoint": name, "val_seconds": time.perf_counter() - t0}
    post(board, record)
    beat(board, f"validated {name}", say=console_line(record))
    return {k: v for k, v in record.items() if k.startswith("val_")}


class ValidationLog:
    """Rank 0's side, in the Ray Train worker: which checkpoints ask for validation, and the judges'
    records (posted to the progress board by the validation tasks) written into metrics.jsonl and
    TensorBoard as they arrive; at the end, a bounded wait for the last ones."""

    def __init__(self, v: Validation | None, board: str | None, log):
        self.v, self.board, self.log = v, board, log
        # records on the board before this worker (a restarted group): its predecessor logged them
        self.seen = logged(board) if v else 0
        self.waiting = 0  # validations asked for and not yet reported

    def request(self, metrics: dict, kimg: float, resolution: int):
        """(the metrics to report with a checkpoint, ``validation`` for ``ray.train.report``)."""
        import ray.train

        v = self.v
        if v is None or not v.judges(resolution):
            return metrics, False
        self.waiting += 1
        if v.keep_best:  # NaN ranks a checkpoint worst until (unless) its judge has run
            metrics = {**metrics, v.keep_best: float("nan")}
        return metrics, ray.train.ValidationTaskConfig(fn_kwargs={"kimg": kimg})

    def log_new(self, timeout_s: float = 10.0) -> int:
        """Writes the records posted since the last call; how many there were."""
        if self.v is None:
            return 0
        new = records(self.board, self.seen, timeout_s)
        for record in new:
            self.log.write(record)
        self.seen += len(new)
        self.waiting -= len(new)
        return len(new)

    def wait_for_all(self) -> None:
        """Until every requested validation has reported, each gap bounded by the validation timeout."""
        if self.v is None:
            return
        gap = self.v.timeout_s + 60.0  # a task's timeout, plus its start and the checkpoint's upload
        last = time.monotonic()
        while self.waiting > 0:
            beat(self.board, f"rank 0: waiting for {self.waiting} validation(s) of checkpoints (they run one at a time)")
            if self.log_new():
                last = time.monotonic()
            elif time.monotonic() - last > gap:
                line = (f"{self.waiting} validation(s) had not reported {gap:.0f} s after the last one; their "
                        f"results (if any) are in the checkpoints' metrics, not in metrics.jsonl")
                beat(self.board, line, say=f"warning: {line}")
                return
            time.sleep(1.0)
