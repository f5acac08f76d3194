"""Sweep definitions (``tuning/*.yaml``): a typed, frozen ``Sweep`` and the per-trial configs.

A sweep file has these top-level keys (unknown keys are errors naming the file and the key)::

    name: tiny_r1_lr                 # experiment name (default: the file's stem)
    description: ...                 # free text
    preset: tiny                     # base preset (name or YAML path); optional with start.checkpoint
    overrides: {schedule.fade_kimg: 0.5}   # fixed dotted overrides for every trial
    start:                           # optional: a per-resolution sweep
      checkpoint: runs/ffhq256/t/checkpoint_...   # local path or s3://
      resolution: 256                # the level the checkpoint is in, and the only level tuned
    space:                           # dotted config key -> distribution
      train.r1_gamma: {loguniform: [1, 100]}
      schedule.lr: {loguniform: [0.0005, 0.005]}  # base lr: the whole lr table becomes this value
      schedule.lr.256: {choice: [0.001, 0.0015]}  # one level's lr
      schedule.batch.256: {choice: [16, 32]}      # one level's global batch
      train.ema_kimg: {uniform: [1, 20]}
      train.style_mixing_prob: {grid: [0.0, 0.9]}
    search: {algorithm: random, num_samples: 8, max_concurrent_trials: 2, seed: 0}
    scheduler: {kind: asha, grace_kimg: 50, reduction_factor: 2}
    # or population-based training: every trial is a member that trains in segments of interval_kimg
    # (0: one per level); at each segment's end the worst quantile continue from the best ones'
    # checkpoints with perturbed values of the space (pb2: chosen by a GP bandit; needs GPy)
    scheduler: {kind: pbt, interval_kimg: 100, quantile: 0.25, resample_probability: 0.25}
    objective: {kind: recon, every_kimg: 10, held_out: 64}
    trial: {kimg: 200, workers: 1, gpu: true, cpus_per_worker: 8}

Distributions: ``choice`` / ``grid`` (a list), ``uniform`` / ``loguniform`` ([low, high]),
``randint`` ([low, high), integers); a plain value is a constant. ``grid`` entries are enumerated
(every combination, ``num_samples`` times each); the others are sampled.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core.config import (
    Config,
    ConfigError,
    ModelConfig,
    ScheduleConfig,
    TrainConfig,
    build_dataclass,
    from_dict,
    load_preset_dict,
    set_dotted,
)
from ..core.schedule import stage_at
from ..data.stream import MAX_STREAMS, default_streams
from ..train.objective import OBJECTIVES

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
ALGORITHMS = ("random", "optuna")
SCHEDULERS = ("asha", "fifo", "pbt", "pb2")
POPULATION = ("pbt", "pb2")
TIME_ATTRS = ("trial_kimg", "training_iteration")
TABLES = ("lr", "batch")


@dataclass(frozen=True)
class StartConfig:
    checkpoint: str = ""  # Checkpoint every trial starts from (local path, file:// or s3://).
    resolution: int = 0  # The level tuned: the checkpoint must be in it.


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "random"  # "random" (random sampling + grid enumeration) or "optuna" (if installed).
    num_samples: int = 4  # Samples of the space (times each grid combination).
    max_concurrent_trials: int = 2
    seed: int = 0  # Seed of the sampler.


@dataclass(frozen=True)
class SchedulerConfig:
    kind: str = "asha"  # "asha" (early stopping), "fifo" (every trial to the end), "pbt" or "pb2" (population).
    time_attr: str = "trial_kimg"  # ASHA's clock: kimg trained in the trial, or "training_iteration" (reports).
    grace_kimg: float = 0.0  # First rung (in time_attr units); 0 = the objective's every_kimg.
    reduction_factor: float = 2.0  # Keep the best 1/reduction_factor at each rung.
    interval_kimg: float = 0.0  # pbt/pb2: perturbation interval; 0 = at every level boundary.
    quantile: float = 0.25  # pbt/pb2: the worst this share copy the best this share.
    resample_probability: float = 0.25  # pbt: a perturbed value is drawn afresh with this probability.
    synch: bool = False  # pbt/pb2: every member waits for the others at each perturbation point.


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "recon"  # "recon" (held-out reconstruction + latent reciprocity) or "fid".
    every_kimg: float = 1.0  # Measured (and reported) every this many kimg.
    held_out: int = 32  # recon: held-out images (and latents) in the fixed batch.
    lae_weight: float = 1.0  # recon: weight of the latent reciprocity term.
    seed: int = 0  # Seed of the fixed latents.
    fid_samples: int = 256  # fid: generated images per measurement.
    fid_real: int = 256  # fid: held-out real images for the reference statistics.
    inception_weights: str = ""  # fid: local Inception weights file (default: $ALAE_RAY_INCEPTION_WEIGHTS / hub cache).

    @property
    def mode(self) -> str:
        return "min"


@dataclass(frozen=True)
class TrialConfig:
    kimg: float = 1.0  # Images (thousands) each trial trains, from its start.
    checkpoint_kimg: float = 0.0  # Checkpoint interval inside a trial (0 = every objective measurement).
    workers: int = 1  # Ray Train workers per trial (with max_workers: the fewest).
    max_workers: int = 0  # Elastic trials: up to this many workers, as the cluster has room (0: exactly workers).
    gpu: bool = False  # One GPU per worker.
    cpus_per_worker: float = 1.0
    driver_cpus: float = 0.01  # The Tune trial itself (only builds and waits on the TorchTrainer).
    max_failures: int = 0  # Worker-group restarts inside a trial.
    retries: int = 1  # Tune restarts of a failed trial; each resumes its Train run from its last checkpoint.
    stall_timeout_s: float = 600.0  # A trial's Train run stops when nothing happens for this long (> 0).


@dataclass(frozen=True)
class Param:
    key: str  # Dotted config key: train.r1_gamma, schedule.lr, schedule.lr.256, schedule.batch.256, ...
    kind: str  # One of DISTRIBUTIONS, or "value".
    args: tuple

    def domain(self):
        from ray import tune

        a = self.args
        return {"choice": lambda: tune.choice(list(a)), "grid": lambda: tune.grid_search(list(a)),
                "uniform": lambda: tune.uniform(*a), "loguniform": lambda: tune.loguniform(*a),
                "randint": lambda: tune.randint(*a), "value": lambda: a[0]}[self.kind]()

    def probes(self) -> list:
        """Values checked against the config at load time: every listed value, or both bounds."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str = ""
    description: str = ""
    preset: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    start: StartConfig | None = None
    space: tuple[Param, ...] = ()
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)

    @property
    def grace_kimg(self) -> float:
        return self.scheduler.grace_kimg or self.objective.every_kimg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["space"] = {p.key: (p.args[0] if p.kind == "value" else {p.kind: list(p.args)}) for p in self.space}
        d["overrides"] = dict(self.overrides)
        d.pop("path")
        return d


SECTIONS = {"start": StartConfig, "search": SearchConfig, "scheduler": SchedulerConfig,
            "objective": ObjectiveConfig, "trial": TrialConfig}
TOP = ("name", "description", "preset", "overrides", "start", "space", *[s for s in SECTIONS if s != "start"])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_param(key: str, spec: Any, where: str) -> Param:
    w = f"{where}: space.{key}"
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: space keys must be dotted config keys, got {key!r}")
    if not isinstance(spec, Mapping):
        if isinstance(spec, (list, tuple)):
            raise ConfigError(f"{w}: a list needs a distribution, e.g. {{choice: {list(spec)}}}")
        return Param(key, "value", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{w}: expected exactly one of {', '.join(DISTRIBUTIONS)} (e.g. {{loguniform: [1, 100]}}), "
                          f"got {dict(spec)!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{w}.{kind}: expected a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(_is_number(a) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"{w}.{kind}: expected [low, high] numbers with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{w}.loguniform: bounds must be > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{w}.randint: bounds must be integers, got {args!r}")
    if kind in ("choice", "grid") and any(isinstance(a, (Mapping, list)) for a in args):
        raise ConfigError(f"{w}.{kind}: values must be scalars, got {args!r}")
    return Param(key, kind, tuple(args))


def parse_sweep(data: Mapping[str, Any], path: str = "<sweep>") -> Sweep:
    """A ``Sweep`` from a parsed YAML mapping; ConfigError naming ``path`` and the key on any problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a sweep file must hold a mapping")
    unknown = sorted(set(data) - set(TOP))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(TOP)}")
    kw: dict[str, Any] = {"path": str(path), "name": str(data.get("name") or Path(path).stem)}
    for key in ("description", "preset"):
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise ConfigError(f"{path}: {key}: expected a string, got {data[key]!r}")
            kw[key] = data[key]
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{path}: overrides: expected a mapping of dotted keys, got {overrides!r}")
    kw["overrides"] = dict(overrides)
    for section, cls in SECTIONS.items():
        if data.get(section) is None:
            continue
        try:
            kw[section] = build_dataclass(cls, data[section], section) if isinstance(data[section], Mapping) else None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if kw[section] is None:
            raise ConfigError(f"{path}: {section}: expected a mapping, got {data[section]!r}")
    space = data.get("space") or {}
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{path}: space: expected a non-empty mapping of dotted config keys to distributions")
    kw["space"] = tuple(parse_param(k, v, path) for k, v in space.items())
    sweep = Sweep(**kw)
    _check_sections(sweep)
    return sweep


def _check_sections(s: Sweep) -> None:
    p = s.path
    if s.search.algorithm not in ALGORITHMS:
        raise ConfigError(f"{p}: search.algorithm must be one of {', '.join(ALGORITHMS)}, got {s.search.algorithm!r}")
    if s.search.algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(f"{p}: search.algorithm optuna needs the optuna package (pip install optuna)") from None
        grids = [q.key for q in s.space if q.kind == "grid"]
        if grids:
            raise ConfigError(f"{p}: space.{grids[0]}: grid is not supported by search.algorithm optuna (use choice)")
    if s.search.num_samples < 1 or s.search.max_concurrent_trials < 1:
        raise ConfigError(f"{p}: search.num_samples and search.max_concurrent_trials must be >= 1")
    if s.scheduler.kind not in SCHEDULERS:
        raise ConfigError(f"{p}: scheduler.kind must be one of {', '.join(SCHEDULERS)}, got {s.scheduler.kind!r}")
    if s.scheduler.time_attr not in TIME_ATTRS:
        raise ConfigError(f"{p}: scheduler.time_attr must be one of {', '.join(TIME_ATTRS)}, got {s.scheduler.time_attr!r}")
    if s.scheduler.reduction_factor <= 1 or s.scheduler.grace_kimg < 0:
        raise ConfigError(f"{p}: scheduler.reduction_factor must be > 1 and scheduler.grace_kimg >= 0")
    if s.scheduler.kind in POPULATION:
        _check_population(s)
    o = s.objective
    if o.kind not in OBJECTIVES:
        raise ConfigError(f"{p}: objective.kind must be one of {', '.join(OBJECTIVES)}, got {o.kind!r}")
    if o.every_kimg <= 0 or o.held_out < 2 or o.fid_samples < 2 or o.fid_real < 2:
        raise ConfigError(f"{p}: objective.every_kimg must be > 0 and held_out/fid_samples/fid_real >= 2")
    if o.kind == "fid":
        _check_fid(s)
    t = s.trial
    if t.kimg <= 0 or t.checkpoint_kimg < 0 or t.workers < 1 or t.cpus_per_worker <= 0:
        raise ConfigError(f"{p}: trial.kimg must be > 0, trial.workers >= 1, trial.cpus_per_worker > 0")
    if t.max_workers and t.max_workers < t.workers:
        raise ConfigError(f"{p}: trial.max_workers {t.max_workers} must be 0 (fixed) or at least trial.workers "
                          f"{t.workers}")
    if t.max_failures < 0 or t.retries < 0 or t.stall_timeout_s <= 0:
        raise ConfigError(f"{p}: trial.max_failures and trial.retries must be >= 0 and trial.stall_timeout_s > 0")
    if not 0 < t.driver_cpus <= 64:
        raise ConfigError(f"{p}: trial.driver_cpus must be > 0 (Tune rejects 0; 0.01 is enough), got {t.driver_cpus}")
    if s.scheduler.kind == "asha" and s.scheduler.time_attr == "trial_kimg" and s.grace_kimg > t.kimg:
        raise ConfigError(f"{p}: scheduler.grace_kimg {s.grace_kimg} exceeds trial.kimg {t.kimg}")
    if s.start is not None and not (s.start.checkpoint and s.start.resolution):
        raise ConfigError(f"{p}: start needs both checkpoint and resolution")


def _check_population(s: Sweep) -> None:
    p, sc = s.path, s.scheduler
    if s.search.algorithm != "random":
        raise ConfigError(f"{p}: scheduler.kind {sc.kind} draws the first population itself: use search.algorithm random")
    if not 0 < sc.quantile <= 0.5 or not 0 <= sc.resample_probability <= 1 or sc.interval_kimg < 0:
        raise ConfigError(f"{p}: scheduler.quantile must be in (0, 0.5], scheduler.resample_probability in [0, 1] "
                          f"and scheduler.interval_kimg >= 0")
    if s.search.num_samples < 2:
        raise ConfigError(f"{p}: a population needs search.num_samples >= 2 members")
    for q in s.space:
        if not (q.key.startswith("train.") or q.key == "schedule.lr" or _table_key(q.key)):
            raise ConfigError(f"{p}: space.{q.key}: a population changes values in mid-run, so it may tune train.*, "
                              f"schedule.lr and schedule.lr/batch.RESOLUTION only (not the model or the level lengths)")
        if q.kind == "grid":
            raise ConfigError(f"{p}: space.{q.key}: grid is not supported by scheduler.kind {sc.kind} (use choice)")
        if sc.kind == "pb2" and q.kind not in ("uniform", "loguniform", "randint", "value"):
            raise ConfigError(f"{p}: space.{q.key}: pb2 models continuous values only (uniform, loguniform, randint)")
    if sc.kind == "pb2":
        try:
            import GPy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError(f"{p}: scheduler.kind pb2 needs the GPy and scikit-learn packages "
                              f"(pip install GPy scikit-learn)") from None


def _check_fid(s: Sweep) -> None:
    """FID needs alae_ray.eval's Inception network and a local copy of its weights."""
    try:
        from ..metrics.networks import load_inception  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{s.path}: objective.kind fid is not available: alae_ray.eval cannot be imported ({exc})") from None
    if s.objective.inception_weights and not Path(s.objective.inception_weights).expanduser().is_file():
        raise ConfigError(f"{s.path}: objective.inception_weights {s.objective.inception_weights!r} does not exist")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_sweep(data or {}, str(path))


# --- from a sweep and a sample to a training config ------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """A sweep checked against its base config (and start checkpoint): ready to run."""

    sweep: Sweep
    base: dict  # the base config as a plain dict (preset or the checkpoint's config), before overrides
    start_kimg: float  # images seen by the start checkpoint (0 without one)
    start_level: int | None

    @property
    def max_kimg(self) -> float:
        return self.start_kimg + self.sweep.trial.kimg

    def perturbation_points(self) -> list[float]:
        """Population sweeps: the kimg at which members report and may be perturbed, the last one
        ``max_kimg``. Every ``scheduler.interval_kimg``, or at each level boundary (a pure function
        of kimg: the schedule does not depend on the values tuned, only on fade/stable lengths)."""
        every, cfg = self.sweep.scheduler.interval_kimg, self.config({})
        points, k = [], self.start_kimg
        while k < self.max_kimg - 1e-9:
            k = min(k + every if every else stage_at(cfg, k).level_end_kimg, self.max_kimg)
            points.append(round(k, 6))
        return points

    def config(self, params: Mapping[str, Any], name: str | None = None) -> Config:
        """The training config of one trial: base, fixed overrides, then the sampled values."""
        s = self.sweep
        data = copy.deepcopy(self.base)
        data["name"] = name or s.name
        for key, value in s.overrides.items():
            set_dotted(data, key, value)
        start_res = data.get("schedule", {}).get("start_resolution", ScheduleConfig.start_resolution)
        params = dict(params)
        if "schedule.lr" in params:  # the base lr: one value for every level ...
            data.setdefault("schedule", {})["lr"] = {int(start_res): params.pop("schedule.lr")}
        for key, value in params.items():
            table = _table_key(key)
            if table:  # ... then per-level entries on top
                sched = data.setdefault("schedule", {})
                sched[table[0]] = {**sched.get(table[0], {}), table[1]: value}
            else:
                set_dotted(data, key, value)
        return from_dict(data)


def _check_workers(t: TrialConfig, cfg: Config, where: str) -> None:
    """The trial's most workers must share the data streams its batches allow (data.stream)."""
    batches = sorted(set(cfg.schedule.batch.values()))
    streams, most = default_streams(batches), max(t.workers, t.max_workers)
    if most > streams:
        raise ConfigError(f"{where} batches {batches}, which {most} workers cannot share (their largest common "
                          f"divisor up to {MAX_STREAMS}, {streams}, is the most)")


def _table_key(key: str) -> tuple[str, int] | None:
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "schedule" and parts[1] in TABLES:
        try:
            return parts[1], int(parts[2])
        except ValueError:
            return None
    return None


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_key(s: Sweep, key: str, cfg: Config) -> None:
    where = f"{s.path}: space.{key}"
    table = _table_key(key)
    parts = key.split(".")
    if table:
        name, res = table
        if res < 4 or res & (res - 1) or res > cfg.model.max_resolution or res < cfg.schedule.start_resolution:
            raise ConfigError(f"{where}: {res} is not a resolution of this model "
                              f"({cfg.schedule.start_resolution}..{cfg.model.max_resolution}, powers of two)")
        if s.start is not None and res != s.start.resolution:
            raise ConfigError(f"{where}: a per-resolution sweep (start.resolution {s.start.resolution}) tunes only "
                              f"schedule.lr.{s.start.resolution} and schedule.batch.{s.start.resolution}")
        return
    if key == "schedule.batch" or (len(parts) == 3 and parts[:2] == ["schedule", "batch"]):
        raise ConfigError(f"{where}: batch sizes are per level: use schedule.batch.RESOLUTION (e.g. schedule.batch.64)")
    if key == "schedule.lr":
        if s.start is not None:
            raise ConfigError(f"{where}: a per-resolution sweep tunes schedule.lr.{s.start.resolution}, not the base lr")
        return
    sections = {"model": ModelConfig, "train": TrainConfig, "schedule": ScheduleConfig}
    if len(parts) != 2 or parts[0] not in sections or parts[1] not in _fields(sections[parts[0]]):
        raise ConfigError(f"{where}: not a config key (train.*, schedule.lr, schedule.lr.RES, schedule.batch.RES, "
                          f"schedule.*, model.*)")
    if s.start is not None and parts[0] != "train":
        raise ConfigError(f"{where}: a per-resolution sweep starts from a checkpoint and may tune train.* and "
                          f"schedule.lr/batch.{s.start.resolution} only")
    if parts[1] in TABLES:
        raise ConfigError(f"{where}: use schedule.{parts[1]}.RESOLUTION")


def plan_sweep(sweep: Sweep) -> SweepPlan:
    """Check the sweep against its base config and start checkpoint; every error names the file, key or URI."""
    from ..infra.checkpoints import checkpoint_info

    p = sweep.path
    start_kimg, start_level, ckpt_cfg = 0.0, None, None
    if sweep.start is not None:
        ckpt_cfg, progress = checkpoint_info(sweep.start.checkpoint)
        start_kimg = progress["images_seen"] / 1000.0
    if sweep.preset:
        try:
            base = load_preset_dict(sweep.preset)
        except ConfigError as exc:
            raise ConfigError(f"{p}: preset: {exc}") from None
    elif ckpt_cfg is not None:
        base = ckpt_cfg.to_dict()
    else:
        raise ConfigError(f"{p}: preset is required (or start.checkpoint, whose config is the base)")
    plan = SweepPlan(sweep, base, start_kimg, None)
    try:
        cfg = plan.config({})
    except ConfigError as exc:
        raise ConfigError(f"{p}: preset/overrides: {exc}") from None
    _check_workers(sweep.trial, cfg, f"{p}: trial.workers: the preset has")
    if ckpt_cfg is not None:
        if cfg.model != ckpt_cfg.model:
            raise ConfigError(f"{p}: the model of preset {sweep.preset!r} (with overrides) differs from the model of "
                              f"checkpoint {sweep.start.checkpoint!r}")
        stage = stage_at(cfg, start_kimg)
        if stage.resolution != sweep.start.resolution:
            raise ConfigError(f"{p}: start.resolution is {sweep.start.resolution} but checkpoint "
                              f"{sweep.start.checkpoint!r} is at {stage.resolution}px ({start_kimg:g} kimg)")
        if plan.max_kimg > stage.level_end_kimg + 1e-9:
            raise ConfigError(f"{p}: trial.kimg {sweep.trial.kimg:g} would leave the {stage.resolution}px level "
                              f"(checkpoint at {start_kimg:g} kimg, next level at {stage.level_end_kimg:g} kimg)")
        start_level = stage.level
    last_kimg = plan.max_kimg - 1e-6  # where the trials' last images train
    reached = stage_at(cfg, last_kimg).resolution
    for param in sweep.space:
        _check_key(sweep, param.key, cfg)
        for value in param.probes():
            try:
                trial = plan.config({param.key: value})
            except ConfigError as exc:
                raise ConfigError(f"{p}: space.{param.key}: value {value!r} gives an invalid config: {exc}") from None
            reached = max(reached, stage_at(trial, last_kimg).resolution)
            _check_workers(sweep.trial, trial, f"{p}: space.{param.key}: value {value!r} gives")
    for param in sweep.space:  # a per-level value only matters once a trial trains at that level
        if (table := _table_key(param.key)) and table[1] > reached:
            raise ConfigError(f"{p}: space.{param.key}: the trials end at {reached}px ({plan.max_kimg:g} kimg), "
                              f"so they never train at {table[1]}px; raise trial.kimg or drop the key")
    return SweepPlan(sweep, base, start_kimg, start_level)


def param_space(sweep: Sweep) -> dict:
    """Tune's param_space: one flat entry per dotted key."""
    return {p.key: p.domain() for p in sweep.space}

