"""The README's main job: `alae-ray train` with no data or cluster arguments, end to end.

It generates the procedural dataset into the (here: temporary) cache, starts its own local Ray,
trains the shapes preset (the main job), and prints where the checkpoint and samples are.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def alae_ray(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "alae_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_embedded_default_trains_end_to_end(tmp_path):
    env = {**os.environ, "ALAE_RAY_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    # The default command, bounded to 2.2 kimg (into level 1 of the shapes schedule, 28 kimg in all).
    out = alae_ray("train", "--max-kimg", "2.2", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["kimg"] == pytest.approx(2.2, abs=0.032)
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "state.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert ckpt.is_relative_to(tmp_path / "runs" / "shapes")  # default storage: ./runs/<preset>
    art = Path(summary["artifacts"])
    assert any(p.name.startswith("generations_") for p in art.iterdir())
    assert any(p.name.startswith("reconstructions_") for p in art.iterdir())
    assert (art / "losses.png").is_file() and (art / "tensorboard").is_dir()
    assert (tmp_path / "cache" / "datasets").is_dir()  # the generated dataset, reused by later runs
    rows = [json.loads(l) for l in (art / "metrics.jsonl").read_text().splitlines()]
    assert {r["level"] for r in rows if "iteration" in r} == {0, 1}
    # every checkpoint was judged while training went on: its validation row, its line on the console
    judged = [r for r in rows if "checkpoint" in r]
    assert judged and all(r["val_position_px"] > 0 and r["checkpoint"].startswith("checkpoint_") for r in judged)
    assert f"validated {judged[-1]['checkpoint']} ({judged[-1]['kimg']:.2f} kimg, 8px" in out.stderr
    # the shapes judge on the final model, at the level it reached (8x8), with the blind guess beside
    judge = summary["judge"]
    assert judge["resolution"] == 8 and judge["items"] == 256
    assert judge["position"]["blind"] > 1.0 and judge["hue"]["blind"] == 90.0
    assert judge["summary"].startswith("256 held-out shapes at 8px: position ")


def test_bad_arguments_fail_cleanly(tmp_path):
    env = {**os.environ, "ALAE_RAY_CACHE": str(tmp_path / "cache")}
    out = alae_ray("train", "--set", "train.r1_gama=1", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "train.r1_gama" in out.stderr and "Traceback" not in out.stderr
    out = alae_ray("train", "--data", str(tmp_path / "nope"), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "nope" in out.stderr and "Traceback" not in out.stderr
    out = alae_ray("train", "--workers", "2-17", cwd=tmp_path, env=env)  # the 16 data streams (batches 32, 16)
    assert out.returncode == 2 and "--workers 2-17: at most the run's 16 data streams" in out.stderr
    out = alae_ray("train", "--workers", "3-2", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "--workers 3-2: the most workers must be at least the fewest" in out.stderr
    out = alae_ray("train", "--workers", "two", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "expected N or MIN-MAX (e.g. 4 or 2-8), got 'two'" in out.stderr
    out = alae_ray("train", "--data-streams", "5", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "--data-streams 5 must divide every batch of the schedule (16, 32)" in out.stderr
    out = alae_ray("train", "--checkpoint-kimg", "0", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "--checkpoint-kimg must be > 0, got 0.0" in out.stderr


def test_more_than_the_machine_is_refused_at_once(tmp_path):
    env = {**os.environ, "ALAE_RAY_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    cpus = os.cpu_count()
    out = alae_ray("train", "--workers", "2", "--cpus-per-worker", str(cpus), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"= {2 * cpus + 1} CPUs: {2 * cpus + 1} CPUs but the cluster has {cpus}" in out.stderr


STALL = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1)
class Hold:  # another job's actor holding one of the two CPUs
    def ping(self):
        return 1

hold = Hold.remote()
ray.get(hold.ping.remote())
from alae_ray.train.run import TrainOptions, describe, run
from alae_ray.infra.board import StallError

try:
    run(describe(TrainOptions(data=sys.argv[1], storage=sys.argv[2], max_kimg=0.064, stall_timeout_s=20, console=False)))
except StallError as exc:
    print(f"STALLED: {exc}", flush=True)
    sys.exit(3)
"""


def test_a_starved_run_stops_and_says_what_it_waited_for(tmp_path):
    """The one free CPU goes to the Train worker, none is left for Ray Data's reading: the run must end
    with a message, not wait for ever."""
    import time

    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source

    prepare(shapes_source(200, 32, seed=0), str(tmp_path / "data"), PrepareOptions(progress=False))
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", STALL, str(tmp_path / "data"), str(tmp_path / "runs")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr[-3000:]
    message = out.stdout[out.stdout.index("STALLED: "):]
    assert "no progress for" in message and "limit 20 s" in message
    assert "the first batch of epoch 0 of the 4px data" in message and "0 of 2 CPUs free" in message
    assert time.monotonic() - t0 < 300


def test_local_paths_on_a_cluster_of_several_machines_are_warned_about():
    from alae_ray.infra.ray_session import local_paths_warning

    paths = {"--data": "/home/me/data", "--storage": "/home/me/runs"}
    assert local_paths_warning(paths, set()) is None  # one machine: its disk is everyone's
    assert local_paths_warning({"--data": "s3://b/d", "--storage": None}, {"10.0.0.2"}) is None
    warning = local_paths_warning(paths, {"10.0.0.2"})
    assert warning.startswith("--data /home/me/data, --storage /home/me/runs are local paths")
    assert "(10.0.0.2)" in warning and "s3://" in warning
