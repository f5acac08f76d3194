"""Tuning without Ray: sweep files, bad input (exit code 2, naming the file/key/URI), per-trial
configs, the objectives, and the exports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from alae_ray.cli import main
from alae_ray.core.config import ConfigError, load_config
from alae_ray.tune.sweep import load_sweep, parse_sweep, plan_sweep

REPO = Path(__file__).resolve().parents[2]

BASE = {"preset": "tiny", "space": {"train.r1_gamma": {"loguniform": [1.0, 30.0]}},
        "objective": {"every_kimg": 0.064}, "trial": {"kimg": 0.256}}


def write(tmp_path, data, name="s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def fake_checkpoint(folder: Path, kimg: float = 2.088, **overrides) -> str:
    """config.json + progress.json (+ an empty state file): enough for the sweep checks."""
    cfg = load_config("tiny", overrides)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(cfg.to_json())
    (folder / "progress.json").write_text(json.dumps({"images_seen": round(kimg * 1000), "level": 1}))
    (folder / "state.safetensors").write_bytes(b"")
    return str(folder)


def tune_cli(capsys, *args) -> tuple[int, str]:
    rc = main(["tune", *args])
    return rc, capsys.readouterr().err


def test_repository_sweeps_parse():
    tiny = load_sweep(REPO / "tuning" / "tiny_r1_lr.yaml")
    assert tiny.preset == "tiny" and tiny.scheduler.kind == "asha" and tiny.objective.kind == "recon"
    assert {p.key for p in tiny.space} >= {"train.r1_gamma", "schedule.lr"}
    plan = plan_sweep(tiny)
    assert plan.start_kimg == 0 and plan.max_kimg == tiny.trial.kimg
    ffhq = load_sweep(REPO / "tuning" / "ffhq256_level.yaml")
    assert ffhq.start.resolution == 256 and ffhq.trial.gpu and ffhq.trial.workers > 1
    assert {p.key for p in ffhq.space} >= {"schedule.lr.256", "schedule.batch.256", "train.r1_gamma"}


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d.update(search={"algorithm": "random", "num_sampels": 3}), "search.num_sampels"),
    (lambda d: d.update(trial={"kimg": 0.256, "gpus": 1}), "trial.gpus"),
    (lambda d: d["space"].update({"train.r1_gama": {"uniform": [1, 2]}}), "space.train.r1_gama"),
    (lambda d: d["space"].update({"train.r1_gamma": {"loguniform": [0.0, 10.0]}}), "space.train.r1_gamma"),
    (lambda d: d["space"].update({"train.r1_gamma": {"normal": [1, 2]}}), "space.train.r1_gamma"),
    (lambda d: d["space"].update({"train.r1_gamma": {"uniform": [5, 1]}}), "space.train.r1_gamma"),
    (lambda d: d["space"].update({"train.style_mixing_prob": {"uniform": [0.5, 1.5]}}), "space.train.style_mixing_prob"),
    (lambda d: d["space"].update({"schedule.batch": {"choice": [16, 32]}}), "space.schedule.batch"),
    (lambda d: d["space"].update({"schedule.lr.48": {"choice": [0.001]}}), "space.schedule.lr.48"),
    (lambda d: d["space"].update({"schedule.lr.64": {"choice": [0.001]}}), "space.schedule.lr.64"),  # > max_resolution
    (lambda d: d["space"].update({"schedule.batch.8": {"choice": [16, -4]}}), "space.schedule.batch.8"),
    # the trials (0.256 kimg of tiny) end at 4x4: a value for 16x16 would change nothing
    (lambda d: d["space"].update({"schedule.lr.16": {"choice": [0.001]}}), "space.schedule.lr.16: the trials end at 4px"),
    (lambda d: d.update(scheduler={"kind": "hyperband"}), "scheduler.kind"),
    (lambda d: d.update(objective={"kind": "lpips"}), "objective.kind"),
    (lambda d: d.update(search={"algorithm": "bayes"}), "search.algorithm"),
    (lambda d: d.update(trial={"kimg": 0.256, "workers": 2, "max_workers": 1}), "trial.max_workers 1 must be 0"),
    # tiny's batches (32 at 4x4, 16 above) give 16 data streams: at most 16 workers
    (lambda d: d.update(trial={"kimg": 0.256, "workers": 2, "max_workers": 17}), "which 17 workers cannot share"),
])
def test_bad_sweep_files_fail_at_once_naming_file_and_key(tmp_path, capsys, mutate, needle):
    data = json.loads(json.dumps(BASE))
    mutate(data)
    path = write(tmp_path, data)
    rc, err = tune_cli(capsys, "--sweep", path, "--check", "--storage", str(tmp_path / "runs"))
    assert rc == 2
    assert path in err and needle in err, err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_sweep_file_and_checkpoint_uri(tmp_path, capsys):
    rc, err = tune_cli(capsys, "--sweep", str(tmp_path / "nope.yaml"), "--check")
    assert rc == 2 and "nope.yaml" in err
    missing = str(tmp_path / "runs" / "no-such-checkpoint")
    data = {**BASE, "start": {"checkpoint": missing, "resolution": 8}}
    rc, err = tune_cli(capsys, "--sweep", write(tmp_path, data), "--check")
    assert rc == 2 and missing in err and "does not exist" in err


def test_per_resolution_sweep_checks(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt", kimg=2.088)  # tiny: 8x8 from 2.0 to 4.0 kimg
    ok = {"start": {"checkpoint": ckpt, "resolution": 8}, "objective": {"every_kimg": 0.064},
          "trial": {"kimg": 0.256},
          "space": {"schedule.lr.8": {"grid": [0.001, 0.002]}, "schedule.batch.8": {"choice": [16, 32]},
                    "train.r1_gamma": {"uniform": [1, 10]}}}
    plan = plan_sweep(parse_sweep(ok, "ok.yaml"))  # no preset: the checkpoint's config is the base
    assert plan.start_kimg == pytest.approx(2.088) and plan.start_level == 1
    cfg = plan.config({"schedule.lr.8": 0.001, "schedule.batch.8": 16, "train.r1_gamma": 3.0})
    assert cfg.schedule.lr == {4: 0.002, 8: 0.001} and cfg.schedule.batch == {4: 32, 8: 16, 16: 16}
    for space, needle in [({"schedule.lr.16": {"choice": [0.001]}}, "space.schedule.lr.16"),
                          ({"schedule.lr": {"choice": [0.001]}}, "space.schedule.lr"),
                          ({"schedule.fade_kimg": {"choice": [1.0]}}, "space.schedule.fade_kimg")]:
        path = write(tmp_path, {**ok, "space": space}, "bad.yaml")
        rc, err = tune_cli(capsys, "--sweep", path, "--check")
        assert rc == 2 and needle in err, err
    # the checkpoint must be in the level, and trials must stay in it
    path = write(tmp_path, {**ok, "start": {"checkpoint": ckpt, "resolution": 16}}, "wrong_level.yaml")
    rc, err = tune_cli(capsys, "--sweep", path, "--check")
    assert rc == 2 and "start.resolution" in err and ckpt in err
    path = write(tmp_path, {**ok, "trial": {"kimg": 5.0}}, "too_long.yaml")
    rc, err = tune_cli(capsys, "--sweep", path, "--check")
    assert rc == 2 and "would leave the 8px level" in err
    # a preset whose model differs from the checkpoint's
    path = write(tmp_path, {**ok, "preset": "mnist"}, "other_model.yaml")
    rc, err = tune_cli(capsys, "--sweep", path, "--check")
    assert rc == 2 and "differs from the model of checkpoint" in err


def test_trial_config_base_lr_then_levels():
    plan = plan_sweep(parse_sweep({**BASE, "overrides": {"schedule.lr": {4: 0.003, 16: 0.001}},
                                   "space": {"schedule.lr": {"loguniform": [1e-4, 1e-2]},
                                             "schedule.lr.16": {"choice": [0.0005]},
                                             "schedule.batch.16": {"choice": [8]},
                                             "train.ema_kimg": {"choice": [2.0]}},
                                   "trial": {"kimg": 4.5}}, "x.yaml"))  # into the 16x16 fade-in (from 4 kimg)
    cfg = plan.config({"schedule.lr": 0.004, "schedule.lr.16": 0.0005, "schedule.batch.16": 8,
                       "train.ema_kimg": 2.0}, name="trial")
    assert cfg.name == "trial"
    assert cfg.schedule.lr == {4: 0.004, 16: 0.0005}  # the base lr replaces the table; levels on top
    assert cfg.schedule.batch == {4: 32, 16: 8} and cfg.train.ema_kimg == 2.0
    assert plan.config({}).schedule.lr == {4: 0.003, 16: 0.001}  # fixed overrides alone


def test_fid_objective_is_wired_to_eval(tmp_path, capsys):
    data = {**BASE, "objective": {"kind": "fid", "every_kimg": 0.064, "inception_weights": str(tmp_path / "none.pth")}}
    rc, err = tune_cli(capsys, "--sweep", write(tmp_path, data), "--check")
    assert rc == 2 and "inception_weights" in err and "none.pth" in err


# --- objectives -----------------------------------------------------------------------------------


def tiny_model():
    from alae_ray.core.model import ALAE

    torch.manual_seed(0)
    return ALAE(load_config("tiny").model).eval()


def test_recon_objective_finite_and_non_finite():
    from alae_ray.train.objective import DIVERGED, fixed_latents, recon_objective

    model = tiny_model()
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    z = fixed_latents(8, 64, seed=0)
    a = recon_objective(model, x, z, level=1, alpha=0.5)
    b = recon_objective(model, x, z, level=1, alpha=0.5)
    assert a == b and a["objective_finite"] and 0 < a["objective"] < DIVERGED
    assert a["objective"] == pytest.approx(a["obj_rec"] + a["obj_lae"])
    assert torch.equal(fixed_latents(8, 64, seed=0), z)  # fixed z, independent of torch's global RNG
    with torch.no_grad():
        next(model.G.parameters()).fill_(float("nan"))
    bad = recon_objective(model, x, z, level=1, alpha=0.5)
    assert bad["objective"] == DIVERGED and not bad["objective_finite"]


def test_fid_objective_with_a_stand_in_feature_network():
    from alae_ray.train.objective import fid_objective, fixed_latents, real_statistics

    model = tiny_model()
    proj = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0))
    features = lambda x: (x.flatten(1) @ proj).double()  # noqa: E731
    z = fixed_latents(64, 64, seed=1)
    own = model.generate(z, 1, 1.0, noise=False)
    mu, sigma = real_statistics(own, features)
    same = fid_objective(model, z, 1, 1.0, mu, sigma, features)
    other = fid_objective(model, z, 1, 1.0, mu + 5.0, sigma, features)
    assert same["objective"] == pytest.approx(0.0, abs=1e-6)
    assert other["objective"] == pytest.approx(16 * 25.0, rel=1e-6)  # |Δmu|^2


# --- exports --------------------------------------------------------------------------------------


def fake_result(trial_id, lr, objs, kimgs, error=None, diverged=False):
    import pandas as pd

    last = {"trial_id": trial_id, "objective": objs[-1] if objs else None, "trial_kimg": kimgs[-1] if kimgs else 0.0,
            "kimg": kimgs[-1] if kimgs else 0.0, "resolution": 4, "objective_finite": not diverged,
            "checkpoint_path": f"/x/{trial_id}/checkpoint"}
    if diverged:
        last["diverged"] = True
    return SimpleNamespace(metrics=last if objs else {}, config={"schedule.lr": lr, "train.r1_gamma": 5.0},
                           metrics_dataframe=pd.DataFrame({"objective": objs}) if objs else None,
                           error=error, checkpoint=None,  # a Tune Result's, None for trials reporting paths only
                           path=f"/x/run_trial_{trial_id * 5}_0000{ord(trial_id) - 97}_1_schedule_lr={lr}_2026-11-20")


def test_exports_table_and_best_preset(tmp_path):
    from alae_ray.tune.export import best_preset_text, best_row, to_csv, to_markdown, trial_rows

    plan = plan_sweep(parse_sweep({**BASE, "space": {"schedule.lr": {"loguniform": [1e-4, 1.0]},
                                                     "train.r1_gamma": {"uniform": [1, 10]}}}, "x.yaml"))
    results = [fake_result("a", 0.002, [0.9, 0.5, 0.4, 0.3], [0.064, 0.128, 0.192, 0.256]),
               fake_result("b", 0.001, [0.8, 0.2], [0.064, 0.128]),  # better, but stopped early
               fake_result("c", 0.003, [0.9, 0.45, 0.41, 0.35], [0.064, 0.128, 0.192, 0.256]),
               fake_result("d", 1.0, [1e9], [0.032], diverged=True),
               fake_result("e", 0.5, [], [], error=RuntimeError("boom\nmore"))]
    rows = trial_rows(results, plan)
    assert [r["trial_id"] for r in rows] == ["a", "c", "b", "d", "eeeee_00004"]
    assert [r["status"] for r in rows] == ["completed", "completed", "stopped", "diverged", "error"]
    assert rows[0]["best_objective"] == 0.3 and rows[3]["objective"] is None and rows[4]["error"] == "boom"
    best = best_row(rows)
    assert best["trial_id"] == "a"
    csv_text = to_csv(rows)
    assert csv_text.splitlines()[0].startswith("trial_id,status,schedule.lr,train.r1_gamma") and len(csv_text.splitlines()) == 6
    md = to_markdown(rows, "t")
    assert md.count("\n| ") == 6 and "| a | completed |" in md
    path = tmp_path / "best.yaml"
    path.write_text(best_preset_text(plan, best))
    cfg = load_config(str(path))
    assert cfg.schedule.lr == {4: 0.002} and cfg.train.r1_gamma == 5.0 and cfg.name == "x_best"
    assert cfg.model == load_config("tiny").model
    assert best_row([r for r in rows if r["status"] != "completed"])["trial_id"] == "b"
    assert best_row([r for r in rows if r["status"] in ("diverged", "error")]) is None


def test_sanitize():
    from alae_ray.train.objective import DIVERGED, sanitize

    assert sanitize(1.5) == 1.5 and sanitize(math.nan) == DIVERGED and sanitize(math.inf) == DIVERGED


def test_concurrency_fits_the_cluster():
    from alae_ray.infra.ray_session import PreflightError
    from alae_ray.tune.runner import fit_concurrency

    plan = plan_sweep(parse_sweep({**BASE, "search": {"max_concurrent_trials": 2},
                                   "trial": {"kimg": 0.256, "workers": 2, "cpus_per_worker": 1}}, "s.yaml"))
    assert fit_concurrency(plan, 6.02, 0, strict=True) == (2, None)  # 2 x (2 workers + 1 data CPU + 0.01)
    n, warning = fit_concurrency(plan, 4.0, 0, strict=True)
    assert n == 1 and "3.01 CPUs" in warning and "running 1 trial(s) at a time" in warning
    with pytest.raises(PreflightError, match="not even one trial fits"):
        fit_concurrency(plan, 2.0, 0, strict=True)
    n, warning = fit_concurrency(plan, 2.0, 0, strict=False)  # a cluster that may grow: wait, bounded
    assert n == 2 and "scale up" in warning
    readme = plan_sweep(load_sweep(str(REPO / "tuning" / "tiny_r1_lr.yaml")))
    assert fit_concurrency(readme, 2.0, 0, strict=True)[0] == 1  # the README's sweep runs on 2 CPUs
    population = plan_sweep(load_sweep(str(REPO / "tuning" / "tiny_pbt.yaml")))
    assert fit_concurrency(population, 2.0, 0, strict=True)[0] == 1  # so does its population: one segment at a time


# --- population sweeps (pbt / pb2) -------------------------------------------------------------

PBT = {**BASE, "search": {"num_samples": 4}, "scheduler": {"kind": "pbt", "interval_kimg": 0.064},
       "overrides": {"schedule.stable_kimg": 0.064, "schedule.fade_kimg": 0.064},  # 8x8 from 0.064 kimg
       "space": {"train.r1_gamma": {"loguniform": [1.0, 30.0]}, "schedule.batch.8": {"choice": [16, 32]},
                 "train.truncation_cutoff": {"randint": [2, 6]}}}


def test_repository_population_sweeps_parse_and_perturb_at_level_boundaries():
    tiny = plan_sweep(load_sweep(REPO / "tuning" / "tiny_pbt.yaml"))
    assert tiny.sweep.scheduler.kind == "pbt" and tiny.sweep.search.num_samples == 4
    assert tiny.perturbation_points() == [1.0, 2.0, 3.0]  # interval_kimg 0: 4x4, 8x8 and 16x16 each end
    ffhq = plan_sweep(load_sweep(REPO / "tuning" / "ffhq1024_pbt.yaml"))
    assert ffhq.sweep.trial.gpu and ffhq.perturbation_points()[:2] == [480.0, 960.0]
    assert ffhq.perturbation_points()[-1] == ffhq.max_kimg


def test_population_points_every_interval_end_at_the_trial_end():
    plan = plan_sweep(parse_sweep({**PBT, "trial": {"kimg": 0.2}}, "s.yaml"))
    assert plan.perturbation_points() == [0.064, 0.128, 0.192, 0.2]


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["space"].update({"model.latent_size": {"choice": [32, 64]}}), "space.model.latent_size"),
    (lambda d: d["space"].update({"schedule.fade_kimg": {"uniform": [0.1, 1.0]}}), "space.schedule.fade_kimg"),
    (lambda d: d["space"].update({"train.r1_gamma": {"grid": [1.0, 10.0]}}), "grid is not supported"),
    (lambda d: d.update(search={"num_samples": 1}), "num_samples >= 2"),
    (lambda d: d.update(scheduler={"kind": "pbt", "quantile": 0.75}), "scheduler.quantile"),
    (lambda d: d.update(scheduler={"kind": "pbt", "resample_probability": 1.5}), "resample_probability"),
    (lambda d: d.update(scheduler={"kind": "pb2"}), "space.schedule.batch.8: pb2 models continuous values only"),
])
def test_bad_population_sweeps_fail_at_once(tmp_path, capsys, mutate, needle):
    data = json.loads(json.dumps(PBT))
    mutate(data)
    rc, err = tune_cli(capsys, "--sweep", write(tmp_path, data), "--check")
    assert rc == 2 and needle in err, err


def test_pbt_keeps_perturbed_values_in_the_declared_space():
    """Tune's PBT multiplies continuous values by 0.8 or 1.2 without looking at the bounds."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from alae_ray.tune.runner import make_scheduler

    plan = plan_sweep(parse_sweep(PBT, "s.yaml"))
    pbt = make_scheduler(plan)
    random.seed(0)
    config = {"train.r1_gamma": 29.0, "schedule.batch.8": 32, "train.truncation_cutoff": 5}
    for _ in range(200):
        config, _ = _explore(config, pbt._hyperparam_mutations, pbt._resample_probability,
                             pbt._perturbation_factors, pbt._custom_explore_fn)
        assert 1.0 <= config["train.r1_gamma"] <= 30.0
        assert config["schedule.batch.8"] in (16, 32)
        assert config["train.truncation_cutoff"] in range(2, 6)


def test_check_writes_nothing_and_makes_no_data(tmp_path, capsys, monkeypatch):
    """--check of a sweep on the embedded dataset neither records the experiment (a later
    --no-resume would be refused) nor generates the dataset (minutes at 1024 px)."""
    monkeypatch.setenv("ALAE_RAY_CACHE", str(tmp_path / "cache"))
    rc = main(["tune", "--sweep", write(tmp_path, BASE), "--check", "--storage", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0 and "the embedded procedural dataset (made at the first run): OK" in out, out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_sweep_recorded_before_a_field_existed_resumes(tmp_path):
    """sweep.json holds the normalised sweep with its defaults; one recorded before a field with a
    default was added (trial.retries, trial.stall_timeout_s) is the same sweep, not a different one."""
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source
    from alae_ray.tune.runner import TuneOptions, _normalised, prepare_sweep

    data = str(tmp_path / "data")
    prepare(shapes_source(8, 32, seed=0), data, PrepareOptions(seed=0))
    path = write(tmp_path, BASE)
    recorded = _normalised(load_sweep(path).to_dict())
    for key in ("retries", "stall_timeout_s"):
        del recorded["trial"][key]
    experiment = tmp_path / "runs" / "s"
    experiment.mkdir(parents=True)
    (experiment / "sweep.json").write_text(json.dumps({"sweep": recorded, "data": data, "shuffle_buffer": 2048}))
    opts = TuneOptions(sweep=path, storage=str(tmp_path / "runs"), resume="always")
    assert prepare_sweep(opts)[5] == data
    # a real difference is still one
    recorded["trial"]["kimg"] = 0.512
    (experiment / "sweep.json").write_text(json.dumps({"sweep": recorded, "data": data, "shuffle_buffer": 2048}))
    with pytest.raises(ConfigError, match="different sweep"):
        prepare_sweep(opts)
