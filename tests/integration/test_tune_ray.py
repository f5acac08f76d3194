"""Ray Tune sweeps for real: trials are Ray Train runs of the tiny preset on a local Ray.

Trials are a few kimg at 4x4 (2 iterations per objective report), so each takes seconds once its
TorchTrainer is up. The 3-trial sweep runs its trials one at a time, so that ASHA's decisions can be
checked against the objectives the trials reported.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import CrashOnce, by_value

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
FIRST, SECOND, BAD = 0.002, 0.001, 10.0  # two sane learning rates, run in this order; BAD explodes


@pytest.fixture(scope="module")
def ray_local(s3_server):
    import ray

    by_value()  # CrashOnce reaches the trials' workers
    from alae_ray.tune.runner import RAY_ENV

    # with its dashboard, as the commands start it: Train cleans up after stopped trials through it;
    # after the S3 fixture, so that the workers inherit the loopback endpoint and credentials
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": RAY_ENV})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory, ray_local):
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source

    uri = str(tmp_path_factory.mktemp("data") / "shapes32")
    prepare(shapes_source(300, 32, seed=0), uri, PrepareOptions(progress=False, test_count=32))
    return uri


def write_sweep(path: Path, **sections) -> str:
    data = {"preset": "tiny", "search": {"num_samples": 1, "max_concurrent_trials": 1},
            "scheduler": {"kind": "asha", "grace_kimg": 0.064, "reduction_factor": 2},
            "objective": {"every_kimg": 0.064, "held_out": 16}, "trial": {"kimg": 0.256}}
    data.update(sections)
    data = {k: v for k, v in data.items() if v is not None}  # preset=None: the checkpoint's config
    path.write_text(yaml.safe_dump(data))
    return str(path)


def sweep(tmp_path, sweep_file: str, data: str, **kw) -> dict:
    from alae_ray.tune.runner import TuneOptions, run_sweep

    return run_sweep(TuneOptions(sweep=sweep_file, storage=str(tmp_path / "tune"), data=data, verbose=0,
                                 shuffle_buffer=64, **kw))


def trial_metrics(summary: dict, trial_id: str) -> list[dict]:
    path = Path(summary["experiment"]) / "trials" / trial_id / "artifacts" / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, shapes32):
    tmp = tmp_path_factory.mktemp("asha")
    path = write_sweep(tmp / "asha.yaml", name="asha", space={"schedule.lr": {"grid": [FIRST, SECOND, BAD]},
                                                             "train.r1_gamma": 5.0})
    t0 = time.perf_counter()
    summary = sweep(tmp, path, shapes32)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def test_three_trial_sweep_completes_and_asha_stops_the_bad_trial(asha_sweep):
    """ASHA's rule, checked against what the trials reported (which of two sane learning rates is
    ahead at a rung after a few iterations is a matter of the third decimal, so the test does not
    assume it): one at a time, the first trial has nothing to be compared with and completes; a
    later one goes on past a rung only if its objective there is no worse than the first's."""
    rows = {r["schedule.lr"]: r for r in asha_sweep["trials"]}
    assert set(rows) == {FIRST, SECOND, BAD}
    first = rows[FIRST]
    assert first["status"] == "completed" and first["reports"] == 4
    assert first["trial_kimg"] == pytest.approx(0.256) and 0 < first["objective"] < 100
    by_kimg = {round(m["kimg"], 3): m["objective"] for m in trial_metrics(asha_sweep, first["trial_id"])}
    assert sorted(by_kimg) == [0.064, 0.128, 0.192, 0.256]  # reported at fixed kimg, ASHA's time attribute
    second = trial_metrics(asha_sweep, rows[SECOND]["trial_id"])  # may run on a little after a stop
    assert all(m["lr"] == SECOND and "objective" in m and "obj_rec" in m for m in second)
    reached = round(rows[SECOND]["trial_kimg"], 3)
    for rung in (0.064, 0.128):  # the rungs below max_t (grace 0.064, reduction factor 2)
        if rung < reached:  # went on past this rung: it was not behind there
            assert next(m["objective"] for m in second if round(m["kimg"], 3) == rung) <= by_kimg[rung]
    if rows[SECOND]["status"] == "stopped":  # stopped at a rung where it was behind
        at_rung = next(m["objective"] for m in second if round(m["kimg"], 3) == reached)
        assert reached in (0.064, 0.128) and at_rung > by_kimg[reached]
    else:
        assert rows[SECOND]["status"] == "completed" and reached == 0.256
    bad = rows[BAD]
    assert bad["status"] in ("stopped", "diverged"), bad  # not an error, not a crashed sweep
    assert bad["trial_kimg"] < first["trial_kimg"]
    assert bad["objective"] is None or bad["objective"] > 10 * first["objective"]
    # exports: the best is the completed trial with the lowest final objective
    exp = Path(asha_sweep["experiment"])
    csv_lines = (exp / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("trial_id,status,schedule.lr,train.r1_gamma")
    completed = [r for r in asha_sweep["trials"] if r["status"] == "completed"]
    assert (exp / "results.md").read_text().count("| completed |") == len(completed)
    best = min(completed, key=lambda r: r["objective"])
    assert asha_sweep["best"]["schedule.lr"] == best["schedule.lr"]
    assert json.loads((exp / "best.json").read_text())["trial_id"] == best["trial_id"]


@pytest.fixture(scope="module")
def best_run(asha_sweep, shapes32, tmp_path_factory):
    """The exported best preset, trained into the 8x8 level (4x4 until 1 kimg with stable_kimg=0)."""
    from alae_ray.train.run import TrainOptions, describe, run

    preset = Path(asha_sweep["experiment"]) / "best_preset.yaml"
    tmp = tmp_path_factory.mktemp("best")
    return preset, run(describe(TrainOptions(
        preset=str(preset), overrides=["schedule.stable_kimg=0"], data=shapes32, storage=str(tmp / "runs"),
        name="best", max_kimg=1.088, tick_kimg=0.128, checkpoint_kimg=0.544, console=False, shuffle_buffer=64)))


def best_run_lr(preset: Path) -> float:
    """The 4x4 learning rate the sweep's best trial had (what its exported preset carries)."""
    return json.loads((preset.parent / "best.json").read_text())["schedule.lr"]


def test_best_preset_loads_and_trains(best_run):
    from alae_ray.core.checkpoint import read_checkpoint
    from alae_ray.core.config import load_config

    preset, summary = best_run
    cfg = load_config(str(preset))
    assert cfg.name == "asha_best" and cfg.train.r1_gamma == 5.0
    assert cfg.schedule.lr == {4: best_run_lr(preset)} and best_run_lr(preset) in (FIRST, SECOND)
    assert cfg.model == load_config("tiny").model
    assert summary["kimg"] == pytest.approx(1.088)
    _, _, progress = read_checkpoint(summary["checkpoint"])
    assert progress["images_seen"] == 1088 and progress["level"] == 1


def test_per_resolution_sweep_starts_from_the_checkpoint_level(best_run, shapes32, tmp_path):
    from alae_ray.core.checkpoint import read_checkpoint

    _, summary = best_run
    ckpt = summary["checkpoint"]
    seen = read_checkpoint(ckpt)[2]["images_seen"]
    path = write_sweep(tmp_path / "level8.yaml", name="level8", preset=None, start={"checkpoint": ckpt, "resolution": 8},
                       space={"schedule.lr.8": {"grid": [0.001, 0.003]}, "schedule.batch.8": 16},
                       scheduler={"kind": "fifo"}, trial={"kimg": 0.128})
    out = sweep(tmp_path, path, shapes32)
    assert len(out["trials"]) == 2 and all(r["status"] == "completed" for r in out["trials"])
    for row in out["trials"]:
        got = trial_metrics(out, row["trial_id"])
        first = got[0]
        assert first["level"] == 1 and first["resolution"] == 8  # the checkpoint's level, not 4x4
        assert first["kimg"] * 1000 >= seen and first["kimg"] == pytest.approx(seen / 1000 + 0.064)
        assert {m["lr"] for m in got} == {row["schedule.lr.8"]} and {m["batch"] for m in got} == {16}
        assert got[-1]["kimg"] == pytest.approx(seen / 1000 + 0.128) and row["trial_kimg"] == pytest.approx(0.128)
    best = yaml.safe_load((Path(out["experiment"]) / "best_preset.yaml").read_text())
    assert best["schedule"]["batch"][8] == 16 and best["schedule"]["lr"][8] in (0.001, 0.003)
    assert best["schedule"]["lr"][4] == best_run_lr(best_run[0])  # other levels keep the checkpoint's schedule


def _terminated(exp: Path) -> list[str]:
    states = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not states:
        return []
    try:
        data = json.loads(Path(states[-1]).read_text())
    except (OSError, ValueError):
        return []  # being rewritten
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return [t["trial_id"] for t in trials if t["status"] == "TERMINATED"]


def interrupt_sweep(path: str, storage: Path, data: str, ray_address: str, until, timeout_s: float) -> None:
    """Run `alae-ray tune` in a subprocess until ``until()`` holds or ``timeout_s`` passes, then kill it
    and its process group (SIGKILL): a real interruption, so the sweep must still be running then."""
    env = {**os.environ, "RAY_ADDRESS": ray_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = [sys.executable, "-m", "alae_ray.cli", "tune", "--sweep", path, "--storage", str(storage), "--data", data,
           "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while not until() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: a real interruption
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, shapes32, tmp_path):
    path = write_sweep(tmp_path / "resume.yaml", name="resume", space={"schedule.lr": {"grid": [0.002, 0.001, 0.0015]}},
                       scheduler={"kind": "fifo"}, trial={"kimg": 0.192})
    exp = tmp_path / "tune" / "resume"
    interrupt_sweep(path, tmp_path / "tune", shapes32, ray_local, until=lambda: _terminated(exp), timeout_s=240)
    done_before = _terminated(exp)  # the killed driver wrote no state after this
    assert 1 <= len(done_before) < 3, done_before
    finished = {t: (exp / "trials" / t / "artifacts" / "metrics.jsonl").read_text() for t in done_before}

    from alae_ray.tune.runner import TuneOptions, run_sweep

    out = run_sweep(TuneOptions(sweep=path, storage=str(tmp_path / "tune"), resume="always", verbose=0,
                                shuffle_buffer=64))
    assert out["resumed"] and out["data"] == shapes32  # the dataset came from the experiment
    assert len(out["trials"]) == 3 and all(r["status"] == "completed" for r in out["trials"])
    for t, text in finished.items():  # not rerun: their Train runs did not report again
        assert (exp / "trials" / t / "artifacts" / "metrics.jsonl").read_text() == text
    assert (exp / "results.csv").read_text().count("completed") == 3


def test_a_failed_trial_is_retried_and_resumes_its_train_run(ray_local, shapes32, tmp_path):
    """A worker of the trial's Train run dies (no Train restarts allowed): Tune retries the trial
    (trial.retries) and its Train run resumes from its last checkpoint, not from the start."""
    from alae_ray.tune.runner import TuneOptions, run_sweep

    path = write_sweep(tmp_path / "retry.yaml", name="retry", space={"schedule.lr": {"grid": [0.002]}},
                       scheduler={"kind": "fifo"},
                       trial={"kimg": 1.28, "max_failures": 0, "retries": 1})
    out = run_sweep(TuneOptions(sweep=path, storage=str(tmp_path / "tune"), data=shapes32, verbose=0,
                                shuffle_buffer=64, worker_callbacks=(CrashOnce(1.0),)))
    (row,) = out["trials"]
    assert row["status"] == "completed" and row["kimg"] == pytest.approx(1.28), row
    artifacts = tmp_path / "tune" / "retry" / "trials" / row["trial_id"] / "artifacts"
    assert (artifacts / CrashOnce.MARKER).exists()
    kimg = [json.loads(line)["kimg"] for line in (artifacts / "metrics.jsonl").read_text().splitlines() if line.strip()]
    restarts = [i for i in range(1, len(kimg)) if kimg[i] <= kimg[i - 1]]
    assert len(restarts) == 1, kimg  # one crash, one resume
    assert kimg[restarts[0]] > 0.064, kimg  # from a checkpoint (every 0.064 kimg), not from the start


def test_the_readme_sweep_runs_on_this_machine(shapes32, tmp_path):
    """The README's `alae-ray tune --sweep tuning/tiny_r1_lr.yaml`, shortened, on a Ray of its own with
    the machine's CPUs: it finishes (on 2 CPUs one trial at a time, saying so) instead of waiting."""
    data = yaml.safe_load((REPO / "tuning" / "tiny_r1_lr.yaml").read_text())
    data["search"]["num_samples"] = 2
    data["trial"]["kimg"] = 0.256
    data["objective"].update(every_kimg=0.128, held_out=16)
    data["scheduler"]["grace_kimg"] = 0.128
    path = tmp_path / "readme.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-m", "alae_ray.cli", "tune", "--sweep", str(path), "--storage",
                          str(tmp_path / "tune"), "--data", shapes32], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "tune" / "tiny_r1_lr" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2
    if os.cpu_count() < 4:
        assert "running 1 trial(s) at a time instead of search.max_concurrent_trials = 2" in out.stderr
    # A console as train's: a line per trial event, then the summary; Ray's own lines only with --verbose
    lines = (out.stderr + out.stdout).strip().splitlines()
    trials = [r.split(",")[0] for r in rows[1:]]
    for t in trials:
        assert any(l.startswith(f"trial {t} started: ") and "schedule.lr=" in l and "train.r1_gamma=" in l
                   for l in lines), lines
        assert [l for l in lines if l.startswith(f"trial {t}  kimg ")], lines
        assert any(l.startswith(f"trial {t} completed ") or l.startswith(f"trial {t} stopped early ") for l in lines)
    ours = ("trial ", "sweep ", "  ", "alae-ray tune: ")
    assert [l for l in lines if not l.startswith(ours)] == [], lines
    assert len(lines) <= 40, lines


# --- population-based training -------------------------------------------------------------------

PBT_SPACE = {"schedule.lr": {"loguniform": [0.0005, 0.005]}, "train.r1_gamma": {"loguniform": [1.0, 30.0]},
             "schedule.batch.8": {"choice": [16, 32]}}


def _member_checkpoints(summary: dict) -> dict[str, Path]:
    return {r["trial_id"]: Path(r["checkpoint"]) for r in summary["trials"]}


# Short enough that members queued behind three others' segments wait longer (one segment at a time),
# long enough for any quiet spell inside a segment on this 2-CPU machine.
PBT_STALL_S = 30.0


def test_a_sweep_on_s3_writes_no_credentials_anywhere(ray_local, shapes32, s3_bucket, tmp_path):
    """The keys given through the environment are resolved where they are used: Tune's experiment
    state (tuner.pkl), the trials' Train runs, checkpoints and artifacts on S3, and the local trial
    folders hold neither the key id nor the secret."""
    import pyarrow.fs as pafs

    from alae_ray.data.storage import resolve

    secrets = [os.environ["AWS_ACCESS_KEY_ID"].encode(), os.environ["AWS_SECRET_ACCESS_KEY"].encode()]
    path = write_sweep(tmp_path / "s3.yaml", name="s3", space={"train.r1_gamma": {"grid": [5.0]}},
                       trial={"kimg": 0.128})
    from alae_ray.tune.runner import TuneOptions, run_sweep

    summary = run_sweep(TuneOptions(sweep=path, storage=f"{s3_bucket}/tune", data=shapes32, verbose=0,
                                    shuffle_buffer=64))
    assert [t["status"] for t in summary["trials"]] == ["completed"]
    fs = resolve(s3_bucket).fs
    objects = [i for i in fs.get_file_info(pafs.FileSelector(s3_bucket[len("s3://"):], recursive=True))
               if i.type == pafs.FileType.File]
    names = {i.base_name for i in objects}
    assert {"tuner.pkl", "run.json", "state.safetensors", "metrics.jsonl"} <= names, names  # the state is there
    leaked = [i.path for i in objects if any(s in fs.open_input_stream(i.path).read() for s in secrets)]
    import ray

    # Tune's and the trials' local folders (working directories, staged results) are in the session's
    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "artifacts"
    files = [p for folder in (session, tmp_path) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "metrics.jsonl" for p in files)  # the trial's artifacts (S3 storage: kept locally too)
    local = [p for p in files if any(s in p.read_bytes() for s in secrets)]
    assert leaked == [] and local == []


@pytest.fixture(scope="module")
def pbt_sweep(ray_local, shapes32, tmp_path_factory):
    """A population of 4 on the tiny preset, 4x4 into 8x8 in three segments (two perturbation points
    before the end), members in step (synch). Interrupted once its first members have reported, then
    resumed to the end."""
    tmp = tmp_path_factory.mktemp("pbt")
    path = write_sweep(tmp / "pbt.yaml", name="pbt", space=PBT_SPACE,
                       overrides={"schedule.stable_kimg": 0.064, "schedule.fade_kimg": 0.064},
                       search={"num_samples": 4, "max_concurrent_trials": 1, "seed": 3},
                       scheduler={"kind": "pbt", "interval_kimg": 0.064, "quantile": 0.25,
                                  "resample_probability": 0.5, "synch": True},
                       trial={"kimg": 0.192, "stall_timeout_s": PBT_STALL_S})
    exp = tmp / "tune" / "pbt"

    def reported() -> int:
        return len(glob.glob(str(exp / "*" / "checkpoint_*")))

    interrupt_sweep(path, tmp / "tune", shapes32, ray_local, until=lambda: reported() >= 2, timeout_s=300)
    assert reported() >= 2, "no member reported within 300 s"
    from alae_ray.tune.runner import TuneOptions, run_sweep

    t0 = time.perf_counter()
    out = run_sweep(TuneOptions(sweep=path, storage=str(tmp / "tune"), resume="always", verbose=0, shuffle_buffer=64))
    out["seconds"] = time.perf_counter() - t0
    return out


def test_pbt_sweep_resumes_and_every_member_finishes(pbt_sweep):
    assert pbt_sweep["resumed"]
    rows = pbt_sweep["trials"]
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows), rows
    assert all(r["kimg"] == pytest.approx(0.192, abs=0.032) for r in rows)
    exp = Path(pbt_sweep["experiment"])
    assert (exp / "population.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    schedule = json.loads((exp / "best_schedule.json").read_text())
    assert schedule[0]["from_kimg"] == 0 and schedule[-1]["to_kimg"] == pytest.approx(pbt_sweep["best"]["kimg"])
    assert all(a["to_kimg"] == b["from_kimg"] for a, b in zip(schedule, schedule[1:]))  # kimg by kimg, no gap
    assert "| from kimg | to kimg | trained by |" in (exp / "best_schedule.md").read_text()


def test_members_that_wait_longer_than_the_stall_timeout_still_train(pbt_sweep):
    """The stall clock starts once a member has its slot: waiting for one is not a stall."""
    waits = [json.loads(line).get("slot_wait_s", 0.0) for f in glob.glob(f"{pbt_sweep['experiment']}/*/result.json")
             for line in Path(f).read_text().splitlines() if line.strip()]
    assert max(waits) > PBT_STALL_S, waits
    assert all(r["status"] == "completed" for r in pbt_sweep["trials"])


def test_pbt_exploit_copies_the_donors_state_exactly(pbt_sweep):
    """Synch PBT with a quantile of 1/4 re-seeds the worst member from the best at each point: a
    member's checkpoint lineage then holds another member's segments, and the Train run that
    continued from the donor's checkpoint loaded exactly its state and images seen."""
    from alae_ray.core.checkpoint import read_checkpoint, state_digest

    exp = Path(pbt_sweep["experiment"])
    exploits = []
    for trial_id, ckpt in _member_checkpoints(pbt_sweep).items():
        schedule = json.loads((ckpt / "schedule.json").read_text())
        for before, after in zip(schedule, schedule[1:]):
            if before["trial_id"] != after["trial_id"]:
                exploits.append((before, after))
    assert exploits, "no member continued from another's checkpoint"
    for donor, receiver in exploits:
        runs = glob.glob(str(exp / "trials" / f"{receiver['trial_id']}-{round(receiver['from_kimg'] * 1000):09d}-*"))
        started = [json.loads(Path(r, "artifacts", "started_from.json").read_text()) for r in runs]
        copied = [s for s in started if donor["trial_id"] in s["checkpoint"]]
        assert copied, (donor, receiver, started)
        for s in copied:
            _, tensors, progress = read_checkpoint(s["checkpoint"])
            assert s["images_seen"] == progress["images_seen"] == round(donor["to_kimg"] * 1000)
            assert s["state_sha256"] == state_digest(tensors)  # networks, EMA, Adam moments: bit for bit


def test_every_member_ends_with_its_own_segment(pbt_sweep):
    """A member's last report ends it and is no perturbation point: no member's result is replaced
    by a copy of another's, and each row's objective is the one its checkpoint's last segment made."""
    for row in pbt_sweep["trials"]:
        last = json.loads((Path(row["checkpoint"]) / "schedule.json").read_text())[-1]
        assert last["trial_id"] == row["trial_id"] and last["to_kimg"] == pytest.approx(row["kimg"])
        assert last["objective"] == pytest.approx(row["objective"])


def test_pbt_values_stay_in_the_declared_space(pbt_sweep):
    seen = []
    for ckpt in _member_checkpoints(pbt_sweep).values():
        seen += [seg["values"] for seg in json.loads((ckpt / "schedule.json").read_text())]
    seen += [{k: r[k] for k in PBT_SPACE} for r in pbt_sweep["trials"]]
    # every configuration PBT perturbed into (its own log: target, donor, times, old and new config)
    perturbed = [json.loads(line)[5] for line in
                 (Path(pbt_sweep["experiment"]) / "pbt_global.txt").read_text().splitlines() if line.strip()]
    assert perturbed, "PBT perturbed nothing"
    for v in seen + perturbed:
        assert 0.0005 <= v["schedule.lr"] <= 0.005 and 1.0 <= v["train.r1_gamma"] <= 30.0
        assert v["schedule.batch.8"] in (16, 32)


def test_pbt_preflight_refuses_a_population_that_cannot_train_here(ray_local, shapes32, tmp_path):
    from alae_ray.infra.ray_session import PreflightError

    path = write_sweep(tmp_path / "big.yaml", name="big", space=PBT_SPACE, search={"num_samples": 4},
                       overrides={"schedule.stable_kimg": 0.064, "schedule.fade_kimg": 0.064},
                       scheduler={"kind": "pbt", "interval_kimg": 0.064}, trial={"kimg": 0.192, "cpus_per_worker": 8})
    with pytest.raises(PreflightError, match="not even one trial fits"):
        sweep(tmp_path, path, shapes32)
    assert not (tmp_path / "tune" / "big" / "trials").exists()
