"""The driver of ``alae-ray tune``: check the sweep, start or restore the Tune experiment, export.

Layout of ``<storage>/<name>/``: Tune's experiment state and trial folders, ``sweep.json`` (the
sweep and dataset this experiment was started with; a resume must match it), ``trials/<trial id>/``
(each trial's Ray Train run: checkpoints, ``artifacts/metrics.jsonl``, samples), and the exports
(``results.csv``, ``results.md``, ``best_preset.yaml``, ``best.json``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass

from ..core.config import ConfigError
from ..infra.ray_session import PreflightError, cluster_can_grow, local_paths_warning, other_node_ips, start_ray
from .sweep import POPULATION, SweepPlan, load_sweep, param_space, parse_sweep, plan_sweep

RESUME_MODES = ("auto", "always", "never")

# Environment of the Ray job that runs a sweep. A finished trial's Ray Data executor dies with its
# Train controller without cancelling its resource request to Ray Data's autoscaling coordinator;
# the request then blocks the CPUs it had reserved until it expires (180 s by default), and on a
# small cluster the next trial's data pipeline gets no CPU at all until then. Trials come and go,
# so let such requests lapse after 20 s (live executors renew theirs every ~10 s).
RAY_ENV = {"RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "20"}




def fit_concurrency(plan: SweepPlan, cluster_cpus: float, cluster_gpus: float, *, strict: bool) -> tuple[int, str | None]:
    """(concurrent trials to run, warning or None). Each trial needs its Train workers' CPUs (and
    GPUs), one CPU for its Ray Data read tasks and its own driver's; when the cluster cannot hold
    ``search.max_concurrent_trials`` of them, fewer run at a time. ``strict`` (a cluster that cannot
    grow): not even one fitting is a PreflightError."""
    t, n = plan.sweep.trial, plan.sweep.search.max_concurrent_trials
    per_trial = t.workers * t.cpus_per_worker + t.driver_cpus + 1
    fit = int(cluster_cpus // per_trial)
    if t.gpu:
        fit = min(fit, int(cluster_gpus // t.workers))
    if fit >= n:
        return n, None
    what = (f"a trial needs {t.workers} worker(s) x {t.cpus_per_worker:g} CPU + 1 CPU for its data + "
            f"{t.driver_cpus:g} for its driver = {per_trial:g} CPUs{f' and {t.workers} GPU(s)' if t.gpu else ''}; "
            f"the cluster has {cluster_cpus:g} CPUs{f' and {cluster_gpus:g} GPUs' if t.gpu else ''}")
    if fit < 1:
        if strict:
            raise PreflightError(f"{what}: not even one trial fits; lower trial.workers or trial.cpus_per_worker")
        return n, f"{what}: waiting for the cluster to scale up (bounded by each trial's stall timeout)"
    return fit, f"{what}: running {fit} trial(s) at a time instead of search.max_concurrent_trials = {n}"


@dataclass
class TuneOptions:
    sweep: str  # Path of the sweep YAML.
    storage: str = "runs/tune"  # Local folder or s3://bucket/prefix.
    name: str | None = None  # Experiment name (default: the sweep's name); the same name resumes.
    data: str | None = None  # Dataset URI (default: the embedded procedural dataset).
    resume: str = "auto"  # auto: resume if the experiment exists; always: it must; never: it must not.
    shuffle_buffer: int = 2048
    verbose: int = 1  # 0: the summary only; 1: a line per trial event; 2: Tune's status tables and Ray's logs.
    worker_callbacks: tuple = ()  # Testing: session callbacks of each trial's Train run (train.run.build_trainer).


class _Store:
    """Small text files in the experiment folder, local or on S3."""

    def __init__(self, path: str, fs):
        self.path, self.fs = path.rstrip("/"), fs

    def read(self, name: str) -> str | None:
        import pyarrow.fs as pafs

        fs = self.fs or pafs.LocalFileSystem()
        try:
            with fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def write(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> str:
        import pyarrow.fs as pafs

        fs = self.fs or pafs.LocalFileSystem()
        target = f"{self.path}/{name}"
        if self.fs is None:  # local: temporary name, then rename (S3 has no directories, and writes whole objects)
            fs.create_dir(self.path, recursive=True)
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            with fs.open_output_stream(target) as f:
                f.write(data)
        return target


def _normalised(obj) -> object:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _with_defaults(recorded: dict, path: str) -> object:
    """A recorded sweep as today's parser reads it: fields added since it was recorded take their
    defaults, so a sweep started before them still resumes."""
    try:
        return _normalised(parse_sweep(recorded, path).to_dict())
    except ConfigError:
        return recorded


def _clip_to_space(bounds: dict, config: dict) -> dict:
    """PBT multiplies continuous values by 0.8 or 1.2 and never looks at the bounds: keep them inside."""
    for key, (kind, low, high) in bounds.items():
        if key in config:
            v = min(max(config[key], low), high)
            config[key] = int(round(v)) if kind == "randint" else v
    return config


def make_scheduler(plan: SweepPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = plan.sweep
    if s.scheduler.kind == "fifo":
        return FIFOScheduler()
    if s.scheduler.kind in ("pbt", "pb2"):
        import functools

        from .schedulers import LivePB2, LivePBT

        sc = s.scheduler
        # randint's upper bound is exclusive, as in Tune's own domain
        bounds = {p.key: (p.kind, p.args[0], p.args[1] - (p.kind == "randint")) for p in s.space
                  if p.kind in ("uniform", "loguniform", "randint")}
        # Members report once per segment, "segment" counting the perturbation points reached (the
        # same for a member and the donor it copied): every report is a perturbation point, also for
        # synch PBT's arithmetic, which kimg (uneven levels, overshooting by part of a batch) is not.
        common = dict(time_attr="segment", perturbation_interval=1, quantile_fraction=sc.quantile,
                      synch=sc.synch, custom_explore_fn=functools.partial(_clip_to_space, bounds))
        if sc.kind == "pb2":
            return LivePB2(hyperparam_bounds={k: [lo, hi] for k, (_, lo, hi) in bounds.items()}, **common)
        # choice: a list, which PBT moves to a neighbouring entry (a Domain would be multiplied)
        mutations = {p.key: (list(p.args) if p.kind == "choice" else p.domain()) for p in s.space if p.kind != "value"}
        return LivePBT(hyperparam_mutations=mutations, resample_probability=sc.resample_probability, **common)
    if s.scheduler.time_attr == "training_iteration":  # one iteration = one objective report
        per = s.objective.every_kimg
        grace, max_t = max(1, round(s.grace_kimg / per)), max(1, math.ceil(s.trial.kimg / per - 1e-9))
    else:
        grace, max_t = s.grace_kimg, s.trial.kimg
    # stop_last_trials=False: a trial that reaches max_t ends by itself (its Train run finishes and
    # releases its workers) instead of being killed by Tune on its last report.
    return ASHAScheduler(time_attr=s.scheduler.time_attr, grace_period=grace, max_t=max_t,
                         reduction_factor=s.scheduler.reduction_factor, stop_last_trials=False)


def make_search(plan: SweepPlan, concurrency: int):
    """(search_alg, max_concurrent_trials for TuneConfig): the basic generator limits concurrency
    itself (Tune ignores TuneConfig's limit for it); a Searcher gets Tune's ConcurrencyLimiter. A
    population starts every member at once (PBT compares them); ``Slots`` limits their training."""
    s = plan.sweep.search
    if plan.sweep.scheduler.kind in POPULATION:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=s.seed), None
    if s.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=s.seed), concurrency
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=s.seed, max_concurrent=concurrency), None


def _check_data(plan: SweepPlan, data: str | None) -> None:
    """The dataset must have the levels the trials train (fails before Ray starts, naming the URI);
    None is the embedded dataset, made to fit."""
    from ..data import open_dataset
    from ..infra.datasets import dataset_levels

    cfg = plan.config({})
    if data is not None:
        dataset_levels(cfg, open_dataset(data))
    if plan.sweep.objective.kind == "shapes":
        from ..judges import shapes

        if not shapes.fits(cfg.model):
            raise ConfigError(f"{plan.sweep.path}: objective.kind shapes judges a StyleALAE on RGB images; preset "
                              f"{cfg.name!r} is a {cfg.model.kind} ALAE on {cfg.model.channels}-channel images")


def prepare_sweep(opts: TuneOptions, check_only: bool = False) -> tuple[SweepPlan, str, _Store, str, object, str | None]:
    """Every check that needs no Ray: (plan, name, store, storage_path, storage_fs, data).
    ``check_only`` (``tune --check``) writes nothing and generates no data: the embedded dataset
    (data None) is made for the preset's resolutions, so it always fits; a preset at 1024 px would
    spend many minutes making it."""
    from ..infra.datasets import embedded_for, storage_root

    if opts.resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {opts.resume!r}")
    plan = plan_sweep(load_sweep(opts.sweep))
    name = opts.name or plan.sweep.name
    storage_path, fs = storage_root(opts.storage)
    store = _Store(f"{storage_path.rstrip('/')}/{name}", fs)
    meta_text = store.read("sweep.json")
    meta = json.loads(meta_text) if meta_text else None
    if meta is not None and opts.resume == "never":
        raise ConfigError(f"experiment {opts.storage}/{name} exists; choose another --name or resume it")
    if meta is None and opts.resume == "always":
        raise ConfigError(f"nothing to resume at {opts.storage}/{name}")
    data = opts.data
    if meta is not None:
        if _with_defaults(meta["sweep"], plan.sweep.path) != _normalised(plan.sweep.to_dict()):
            raise ConfigError(f"experiment {opts.storage}/{name} was started with a different sweep than "
                              f"{plan.sweep.path}; restore that file or choose another --name")
        if data and data != meta["data"]:
            raise ConfigError(f"experiment {opts.storage}/{name} was started with --data {meta['data']}, not {data}")
        data = meta["data"]
        # the trials' Train runs resume with the shuffle window they began with (it is part of each
        # run's definition); an experiment from before it was recorded used the default
        opts.shuffle_buffer = int(meta.get("shuffle_buffer", TuneOptions.shuffle_buffer))
    if not data and not check_only:
        data = embedded_for(plan.config({}))
    _check_data(plan, data)
    if meta is None and not check_only:
        store.write("sweep.json", json.dumps({"sweep": _normalised(plan.sweep.to_dict()), "data": data,
                                              "shuffle_buffer": opts.shuffle_buffer}, indent=2))
    return plan, name, store, storage_path, fs, data


def run_sweep(opts: TuneOptions) -> dict:
    """Run (or resume) a sweep to the end; export the table and the best preset; return a summary."""
    plan, name, store, storage_path, fs, data = prepare_sweep(opts)

    import ray
    from ray import tune

    from .console import SweepConsole, ray_output
    from .export import best_preset_text, best_row, to_csv, to_markdown, trial_rows
    from .trainable import Slots, TrialContext, run_trial

    start_ray("tune", verbose=opts.verbose >= 2,
              runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}})
    total = ray.cluster_resources()
    concurrency, warning = fit_concurrency(plan, total.get("CPU", 0.0), total.get("GPU", 0.0),
                                           strict=not cluster_can_grow())
    shared = local_paths_warning({"--data": data, "--storage": None if fs is not None else storage_path},
                                 other_node_ips())
    for w in (warning, shared):
        if w:
            print(f"alae-ray tune: warning: {w}", file=sys.stderr, flush=True)
    s = plan.sweep
    ctx = TrialContext(plan, data, f"{'s3://' if fs is not None else ''}{store.path}/trials",
                       shuffle_buffer=opts.shuffle_buffer, worker_callbacks=tuple(opts.worker_callbacks),
                       slots=Slots.remote(concurrency) if s.scheduler.kind in POPULATION else None)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"CPU": s.trial.driver_cpus})
    console = [SweepConsole([p.key for p in s.space], s.trial.kimg)] if opts.verbose == 1 else None
    exp = store.path
    resumed = tune.Tuner.can_restore(exp, storage_filesystem=fs) if opts.resume != "never" else False
    if resumed:
        # An errored trial continues too: its Train run (or member's segment) resumes from its checkpoint.
        tuner = tune.Tuner.restore(exp, trainable, resume_unfinished=True, resume_errored=True,
                                   restart_errored=False, storage_filesystem=fs)
    else:
        search_alg, max_concurrent = make_search(plan, concurrency)
        tuner = tune.Tuner(
            trainable, param_space=param_space(s),
            tune_config=tune.TuneConfig(metric="objective", mode=s.objective.mode, scheduler=make_scheduler(plan),
                                        search_alg=search_alg, num_samples=s.search.num_samples,
                                        max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=s.trial.retries),
                                      callbacks=console, verbose=2 if opts.verbose >= 2 else 0))
    with ray_output(opts.verbose >= 2):
        grid = tuner.fit()
    rows = trial_rows(grid, plan)
    files = {"results_csv": store.write("results.csv", to_csv(rows)),
             "results_md": store.write("results.md", to_markdown(rows, f"Sweep {s.name} ({s.objective.kind}, lower is better)"))}
    best = best_row(rows)
    if best is not None:
        files["best_preset"] = store.write("best_preset.yaml", best_preset_text(plan, best))
        files["best_json"] = store.write("best.json", json.dumps(best, indent=2, default=str))
    if s.scheduler.kind in POPULATION:
        from .export import population_plot, population_schedule, schedule_markdown

        if best is not None and (schedule := population_schedule(grid, best["trial_id"])):
            files["best_schedule"] = store.write("best_schedule.json", json.dumps(schedule, indent=2))
            files["best_schedule_md"] = store.write("best_schedule.md", schedule_markdown(schedule, plan))
        files["population_plot"] = store.write_bytes("population.png", population_plot(grid, s.name))
    return {"name": name, "experiment": exp if fs is None else f"s3://{exp}", "resumed": resumed, "data": data,
            "trials": rows, "best": best, "files": files}


def format_summary(summary: dict) -> str:
    from collections import Counter

    counts = Counter(r["status"] for r in summary["trials"])
    lines = [f"sweep {summary['name']}{' (resumed)' if summary['resumed'] else ''}: {len(summary['trials'])} trials ("
             + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"]
    best = summary["best"]
    if best is not None:
        lines.append(f"  best: {best['trial_id']} objective {best['objective']:.6g} after {best['trial_kimg']:g} kimg")
    for key, path in summary["files"].items():
        lines.append(f"  {key.replace('_', ' ')}: {path}")
    return "\n".join(lines)
