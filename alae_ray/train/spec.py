"""One Train run, described once: ``RunSpec``.

The CLI (``run.describe`` from ``TrainOptions``, its parsed flags) and Tune (a trial's sampled
``Config``) build it once, every check done; the driver sets up Ray Train from it and hands it whole
to the workers as a plain dict (``to_dict``/``from_dict``: JSON types only), so the driver, the
workers, the run record and the tests read the same typed fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Config, from_dict
from .validation import Validation


@dataclass(frozen=True)
class RunSpec:
    # what is trained
    config: Config  # resolved: the preset with its overrides, a checkpoint's config, or a trial's sample
    data: str  # dataset URI (local or s3://), the embedded dataset already made
    data_digest: str  # content digest of its shards (train.ownership.dataset_digest)
    levels: tuple[int, ...]  # resolutions of the dataset this run reads, low to high
    flip: bool = True  # random horizontal flips
    shuffle_buffer: int = 2048  # rows the run permutes together, shared by its data streams
    streams: int = 1  # data streams (data.stream): any worker count dividing it reads the same batches
    # where it goes
    name: str = "run"
    storage: str = "runs"  # absolute local folder or s3://bucket/prefix: checkpoints at STORAGE/NAME
    artifacts: str | None = None  # absolute local folder for samples/metrics/TensorBoard (None: beside the checkpoints)
    # how long and how often (kimg)
    max_kimg: float = 0.0
    start_kimg: float = 0.0  # images already seen by init_checkpoint
    tick_kimg: float = 0.5
    checkpoint_kimg: float | None = None  # None: core.pacing's automatic pacing
    keep: int = 3
    # on what
    workers: int = 1  # the fewest workers it trains with
    max_workers: int | None = None  # elastic: up to this many, as the cluster has room (None: fixed)
    resize_check_s: float = 60.0  # how often an elastic run looks for room to grow
    gpu: bool = False
    cpus_per_worker: float = 1.0
    # failures and bounds
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    stall_timeout_s: float = 600.0
    # where it starts
    init_checkpoint: str | None = None  # a new run from another run's checkpoint
    init_data_position: bool = False  # ... and its data position (a population member)
    # what judges it
    validation: Validation | None = None  # each checkpoint, in a Ray task of its own
    objective: dict | None = None  # a tuning objective every tick (train.objective)
    # how it talks and what it may do
    console: bool = True
    verbose: bool = False
    allow_changes: bool = False  # continue a run whose recorded definition differs
    preset: str | None = None  # for people (run.json): where the config came from
    overrides: tuple[str, ...] = ()

    # --- derived --------------------------------------------------------------------------------

    @property
    def s3(self) -> bool:
        return self.storage.startswith("s3://")

    @property
    def run_uri(self) -> str:
        """The run directory: checkpoints, run.json, the lease."""
        return f"{self.storage.rstrip('/')}/{self.name}" if self.s3 else str(Path(self.storage) / self.name)

    @property
    def artifacts_dir(self) -> Path:
        """Where rank 0 writes samples and metrics: ``artifacts``, else beside the checkpoints (for
        s3:// storage ``describe`` names a local folder, uploaded to ``artifacts_upload``)."""
        return Path(self.artifacts) if self.artifacts else Path(self.run_uri) / "artifacts"

    @property
    def artifacts_upload(self) -> str | None:
        return f"{self.run_uri}/artifacts" if self.s3 else None

    @property
    def artifacts_shown(self) -> str:
        return self.artifacts_upload or str(self.artifacts_dir)

    @property
    def data_resolution(self) -> int | None:
        """The one resolution an MLP ALAE reads (None: the schedule's level)."""
        return self.levels[-1] if self.config.model.kind == "mlp" else None

    @property
    def elastic(self) -> bool:
        return self.max_workers is not None

    @property
    def workers_shown(self) -> str:
        """As ``--workers`` takes it: N, or MIN-MAX."""
        return f"{self.workers}-{self.max_workers}" if self.elastic else str(self.workers)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))

    # --- plain data -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON types only (the config's tables keyed by resolution as strings, as in run.json)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["config"] = json.loads(self.config.to_json())
        d["levels"], d["overrides"] = list(self.levels), list(self.overrides)
        if self.validation is not None:
            v = dataclasses.asdict(self.validation)
            d["validation"] = {**v, "resolutions": None if v["resolutions"] is None else list(v["resolutions"])}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        v = d.get("validation")
        if v is not None:
            v = Validation(**{**v, "resolutions": None if v["resolutions"] is None else tuple(v["resolutions"])})
        return cls(**{**d, "config": from_dict(d["config"]), "levels": tuple(d["levels"]),
                      "overrides": tuple(d.get("overrides", ())), "validation": v})
