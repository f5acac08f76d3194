"""Ray Train: real TorchTrainer runs on a local Ray, with data from the loopback S3 server.

Small schedules (levels of 96-128 images) keep every run to tens of seconds on 2 cores while still
crossing level changes and fade-ins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CrashOnce, by_value

pytestmark = pytest.mark.ray

# Short levels: 4x4 for 96 images, then 8x8 fading in over 96 and stable for 96, then 16x16 ...
FAST = ["schedule.fade_kimg=0.096", "schedule.stable_kimg=0.096", "schedule.final_kimg=0.2",
        "schedule.batch={4: 16, 16: 16}", "model.max_resolution=16", "train.ema_kimg=0.05"]


@pytest.fixture(scope="module")
def ray_local(s3_server):
    import ray

    by_value()  # CrashOnce reaches the workers
    # Started after the S3 fixture so the workers inherit the loopback endpoint and credentials.
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def faces_s3(s3_bucket_factory, shared_data, ray_local):
    from alae_ray.data import PrepareOptions, open_source, prepare

    uri = f"{s3_bucket_factory('faces')}/faces16"
    prepare(open_source(str(shared_data / "faces128"), resolution=16), uri,
            PrepareOptions(test_count=16, progress=False))
    return uri


@pytest.fixture(scope="module")
def shapes_local(tmp_path_factory, ray_local):
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source

    uri = str(tmp_path_factory.mktemp("data") / "shapes16")
    prepare(shapes_source(400, 16, seed=0), uri, PrepareOptions(progress=False))
    return uri


LOSSES = ("loss_d", "r1", "loss_g", "loss_lae")


def metrics(artifacts: str | Path, validations: bool = False) -> list[dict]:
    """The ticks' rows of metrics.jsonl (or, with ``validations``, the validations' rows)."""
    rows = [json.loads(l) for l in (Path(artifacts) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if ("iteration" in r) != validations]


def last_per_iteration(rows: list[dict]) -> dict[int, dict]:
    """After a restart some iterations are reported twice; the later report is the one that counted."""
    return {r["iteration"]: r for r in rows}


def spec(tmp_path, **kw):
    """The RunSpec of a short tiny run (the options described, as alae-ray train does)."""
    from alae_ray.train.run import TrainOptions, describe

    base = dict(preset="tiny", overrides=list(FAST), storage=str(tmp_path / "runs"), name="t",
                artifacts=str(tmp_path / "artifacts"), tick_kimg=0.016, checkpoint_kimg=0.096,
                console=False, shuffle_buffer=64)
    base.update(kw)
    return describe(TrainOptions(**base))


def test_two_workers_from_s3_cross_a_level_change(tmp_path, faces_s3, s3_bucket):
    from alae_ray.core.checkpoint import read_checkpoint
    from alae_ray.train.run import run

    opts = spec(tmp_path, data=faces_s3, workers=2, max_kimg=0.24, storage=f"{s3_bucket}/runs")
    summary = run(opts)
    rows = metrics(tmp_path / "artifacts")
    assert {r["level"] for r in rows} == {0, 1}
    assert any(0.0 < r["alpha"] < 1.0 for r in rows if r["level"] == 1)  # a fade-in happened
    assert rows[-1]["kimg"] == pytest.approx(0.24)
    assert summary["kimg"] == pytest.approx(0.24)
    assert summary["checkpoint"].startswith(s3_bucket[len("s3://"):])  # checkpoints went to S3
    # the checkpoint on S3 is complete and loads without executing code
    import pyarrow.fs as pafs

    from alae_ray.data.storage import resolve

    fs = resolve(s3_bucket).fs
    local = tmp_path / "ckpt"
    local.mkdir()
    pafs.copy_files(summary["checkpoint"], str(local), source_filesystem=fs)
    cfg, tensors, progress = read_checkpoint(local)
    assert progress["images_seen"] == 240 and progress["level"] == 1
    assert any(k.startswith("ema.") for k in tensors) and any(k.startswith("opt_ED.") for k in tensors)
    assert {"rng.rank0.cpu", "rng.rank1.cpu"} <= set(tensors)  # every worker's RNG
    # samples were written and mirrored to the storage
    names = {p.name for p in (tmp_path / "artifacts").iterdir()}
    assert any(n.startswith("generations_") for n in names) and "losses.png" in names
    uploaded = fs.get_file_info(pafs.FileSelector(f"{s3_bucket[5:]}/runs/t/artifacts"))
    assert any(i.base_name == "losses.png" for i in uploaded)


def test_one_two_and_three_workers_agree_on_the_first_step(tmp_path, shapes_local):
    """One worker, two, or three (unequal parts: 5, 5 and 6 of the 16 data streams): the same rows
    make up the global batch, the same z and mixing coins, flips and initial weights, the losses
    averaged over the workers by share, and G's noise drawn for the global batch too. The first
    step's losses agree up to summation order, the bound test_distributed_core measures."""
    from alae_ray.train.run import run

    first = {}
    for workers in (1, 2, 3):
        run(spec(tmp_path / str(workers), data=shapes_local, workers=workers, max_kimg=0.016))
        first[workers] = metrics(tmp_path / str(workers) / "artifacts")[0]
    one = first[1]
    for workers in (2, 3):
        other = first[workers]
        assert one["iteration"] == other["iteration"] == 1 and other["workers"] == workers
        for key in (*LOSSES, "real_score", "fake_score"):
            assert other[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (workers, key)


def test_interrupted_run_resumes_exactly(tmp_path, shapes_local):
    from alae_ray.train.run import run

    straight = spec(tmp_path / "a", data=shapes_local, max_kimg=0.24)
    run(straight)
    want = last_per_iteration(metrics(tmp_path / "a" / "artifacts"))

    crashing = spec(tmp_path / "b", data=shapes_local, max_kimg=0.24)
    with pytest.raises(Exception):
        run(crashing, worker_callbacks=[CrashOnce(0.15)])  # one worker dies hard and no restarts are allowed
    assert (tmp_path / "b" / "artifacts" / CrashOnce.MARKER).exists()
    summary = run(spec(tmp_path / "b", data=shapes_local, max_kimg=0.24))  # the same command again
    got = last_per_iteration(metrics(tmp_path / "b" / "artifacts"))
    assert summary["kimg"] == pytest.approx(0.24)
    resumed = [i for i in got if got[i]["kimg"] > 0.096]  # after the checkpoint it resumed from
    assert len(resumed) >= 8
    for i in resumed:  # on CPU, the same numbers exactly
        assert {k: got[i][k] for k in LOSSES} == {k: want[i][k] for k in LOSSES}, i


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, shapes_local, capfd):
    """The newest checkpoint truncated (a partial copy, a disk error): the same command resumes from
    the one before it, saying so, instead of failing until max_failures runs out."""
    from alae_ray.infra.checkpoints import run_checkpoints
    from alae_ray.train.ownership import DEFINITION_FILE, LEASE_FILE
    from alae_ray.train.run import run

    run(spec(tmp_path, data=shapes_local, max_kimg=0.24))
    run_dir = tmp_path / "runs" / "t"
    newest, previous = run_checkpoints(str(run_dir))[:2]
    state = Path(newest) / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capfd.readouterr()
    summary = run(spec(tmp_path, data=shapes_local, max_kimg=0.288))
    err = capfd.readouterr().err
    assert (f"warning: checkpoint {Path(newest).name} is unreadable (checkpoint " in err
            and f"resumed from the newest earlier readable one, {Path(previous).name}" in err), err
    rows = metrics(tmp_path / "artifacts")
    restart = next(i for i in range(1, len(rows)) if rows[i]["kimg"] <= rows[i - 1]["kimg"])
    assert rows[restart - 1]["kimg"] == pytest.approx(0.24) and rows[restart]["kimg"] == pytest.approx(0.208)
    assert summary["kimg"] == pytest.approx(0.288)
    assert (run_dir / DEFINITION_FILE).is_file() and not (run_dir / LEASE_FILE).exists()


def test_worker_killed_mid_run_recovers(tmp_path, shapes_local):
    from alae_ray.train.run import run

    summary = run(spec(tmp_path, data=shapes_local, workers=2, max_kimg=0.24, max_failures=1),
                  worker_callbacks=[CrashOnce(0.15)])
    assert (tmp_path / "artifacts" / CrashOnce.MARKER).exists()
    rows = metrics(tmp_path / "artifacts")
    restart = next(i for i in range(1, len(rows)) if rows[i]["kimg"] <= rows[i - 1]["kimg"])
    crashed_at, resumed_from = rows[restart - 1]["kimg"], rows[restart]["kimg"] - 0.016
    assert crashed_at - resumed_from <= 0.096 + 1e-9  # lost at most one checkpoint interval
    assert summary["kimg"] == pytest.approx(0.24)  # and ended with the right number of images
    assert rows[-1]["kimg"] == pytest.approx(0.24)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, shapes_local):
    """A NaN ends the run with an error naming phase and iteration, and is not retried (a restart from
    the last checkpoint would meet it again) even where worker failures are."""
    from alae_ray.core.checkpoint import read_checkpoint
    from alae_ray.core.phases import NonFiniteLossError
    from alae_ray.train.run import run

    good = run(spec(tmp_path, data=shapes_local, max_kimg=0.096))
    before = {p.name: p.read_bytes() for p in Path(good["checkpoint"]).iterdir()}
    rows_before = len(metrics(tmp_path / "artifacts"))
    with pytest.raises(NonFiniteLossError, match="loss_d in the discriminator phase at iteration 6"):
        # the same run continued with a change that poisons it (so the change is allowed explicitly)
        run(spec(tmp_path, data=shapes_local, max_kimg=0.2, max_failures=2, allow_changes=True,
                    overrides=FAST + ["train.r1_gamma=.inf"]))
    message = (tmp_path / "artifacts" / "FAILED.txt").read_text()
    assert "non-finite" in message and "discriminator phase at iteration 6" in message
    assert len(metrics(tmp_path / "artifacts")) == rows_before  # no tick reported after it, no restart
    assert {p.name: p.read_bytes() for p in Path(good["checkpoint"]).iterdir()} == before
    assert read_checkpoint(good["checkpoint"])[2]["images_seen"] == 96


def test_more_workers_than_cpus_is_refused_before_anything_starts(tmp_path, shapes_local):
    from alae_ray.infra.ray_session import PreflightError
    from alae_ray.train.run import run

    # ray_local has 4 CPUs: 4 workers + 1 CPU for Ray Data's reading do not fit
    with pytest.raises(PreflightError, match=r"4 worker\(s\) x 1 CPU \+ 1 CPU .* = 5 CPUs: 5 CPUs but the cluster "
                                             r"has 4; use --workers 3"):
        run(spec(tmp_path, data=shapes_local, workers=4, max_kimg=0.032))
    # an elastic run on a Ray that cannot grow: its most workers must fit
    with pytest.raises(PreflightError, match=r"4 worker\(s\) x 1 CPU .* has 4; use --workers 2-3"):
        run(spec(tmp_path, data=shapes_local, workers=2, max_workers=4, max_kimg=0.032))
    assert not (tmp_path / "runs" / "t").exists()


def test_fine_tuning_starts_from_an_imported_authors_model(tmp_path, shared_data, ray_local):
    """train --init with the authors' (fixture) checkpoint: its config, its weights, the top level."""
    import torch

    from alae_ray.core.checkpoint import load_model, read_checkpoint
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source
    from alae_ray.releases import import_authors
    from alae_ray.train.run import TrainOptions, describe, run

    ref = shared_data / "authors-reference"
    imported = tmp_path / "small"
    import_authors(str(ref / "small_style.pth"), imported, config=str(ref / "small_style.yaml"), progress=False)
    start = read_checkpoint(imported)[2]["images_seen"]
    data = str(tmp_path / "shapes32")
    prepare(shapes_source(200, 32, seed=0), data, PrepareOptions(progress=False))
    summary = run(describe(TrainOptions(
        preset=None, init_checkpoint=str(imported), overrides=["schedule.batch={32: 16}"], data=data,
        storage=str(tmp_path / "runs"), name="ft", artifacts=str(tmp_path / "art"), max_kimg=start / 1000 + 0.032,
        tick_kimg=0.016, checkpoint_kimg=0.032, console=False, shuffle_buffer=64)))
    _, _, progress = read_checkpoint(summary["checkpoint"])
    assert progress["images_seen"] == start + 32 and progress["level"] == 3  # the top level, where they stopped
    rows = metrics(tmp_path / "art")
    assert {r["resolution"] for r in rows} == {32} and all(r["alpha"] == 1.0 for r in rows)
    before, _, _ = load_model(imported, ema=False)
    after, cfg, _ = load_model(summary["checkpoint"], ema=False)
    assert cfg.name == "small_style"
    for (name, a), b in zip(before.named_parameters(), after.parameters()):
        # two iterations of Adam moved each stored weight by at most a few learning rates
        assert (a - b).abs().max() < 10 * 0.0015, name
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_checkpoints_are_judged_while_training_goes_on_and_the_best_is_kept(tmp_path, shapes_local, capfd):
    from alae_ray.infra.checkpoints import run_checkpoints
    from alae_ray.train.run import run

    summary = run(spec(tmp_path, data=shapes_local, max_kimg=0.24, keep=1, keep_best="val_position_px",
                          console=True))
    judged = metrics(tmp_path / "artifacts", validations=True)
    # one judge per checkpoint (0.096, 0.192 and the last, 0.24), each at the level it reached
    assert [round(r["kimg"], 3) for r in judged] == [0.096, 0.192, 0.24]
    assert [r["val_resolution"] for r in judged] == [4, 8, 8]
    assert all(0 <= r["val_position_px"] < 20 and 0 <= r["val_shape_pct"] <= 100 for r in judged)
    # Ray Train merged each result into its checkpoint's metrics and kept the best beside the newest
    best = min(judged, key=lambda r: r["val_position_px"])
    assert summary["best"]["value"] == best["val_position_px"] and summary["best"]["checkpoint"].endswith(best["checkpoint"])
    kept = {uri.rstrip("/").rsplit("/", 1)[-1] for uri in run_checkpoints(str(tmp_path / "runs" / "t"))}
    assert kept == {best["checkpoint"], judged[-1]["checkpoint"]}
    assert f"validated {judged[-1]['checkpoint']} (0.24 kimg, 8px" in capfd.readouterr().err


def test_a_failing_validation_is_posted_and_raised_with_its_checkpoint(tmp_path, ray_local):
    import ray
    import ray.train

    from alae_ray.infra.board import new_board
    from alae_ray.train.validation import validate

    board, name = new_board()
    broken = tmp_path / "checkpoint_broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(Exception):  # the original error, for Ray Train to mark the checkpoint
        validate(ray.train.Checkpoint.from_directory(str(broken)), judge="shapes", kimg=1.5, board=name)
    posted = ray.get(board.records.remote(0), timeout=30)
    assert posted[0]["checkpoint"] == "checkpoint_broken" and posted[0]["kimg"] == 1.5
    assert posted[0]["val_error"].startswith("validation of checkpoint_broken (1.50 kimg) failed: ")
    _, _, said = ray.get(board.state.remote(), timeout=30)
    assert said == [f"warning: {posted[0]['val_error']}"]
