"""Runs that never mix: a run's recorded definition and its writer's lease, on local storage and on
the loopback S3 server; samples and uploads that fail after a checkpoint are warnings, not crashes.
No Ray here: these are checked before Ray starts (describe) or by the driver around fit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from alae_ray.train.ownership import (
    DEFINITION_FILE,
    LEASE_FILE,
    RunConflict,
    RunDefinition,
    RunLease,
    record_definition,
)

SMALL = ["model.max_resolution=8", "schedule.batch={4: 16}"]


@pytest.fixture(scope="module")
def shapes8(tmp_path_factory):
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source

    uri = str(tmp_path_factory.mktemp("data") / "shapes8")
    prepare(shapes_source(64, 8, seed=0), uri, PrepareOptions(progress=False))
    return uri


def options(tmp_path, data, **kw):
    from alae_ray.train.run import TrainOptions

    return TrainOptions(**{"preset": "tiny", "overrides": list(SMALL), "data": data, "storage": str(tmp_path / "runs"),
                           "name": "r", **kw})


def started(opts) -> str:
    """describe() a run and record its definition, as fit() does once it holds the lease."""
    from alae_ray.train.run import describe

    spec = describe(opts)
    record_definition(spec.run_uri, RunDefinition.of(spec), spec.allow_changes)
    return spec.run_uri


def test_the_same_run_again_continues_and_another_definition_is_refused_naming_it(tmp_path, shapes8):
    from alae_ray.train.run import describe

    run_uri = started(options(tmp_path, shapes8))
    record = json.loads((tmp_path / "runs" / "r" / DEFINITION_FILE).read_text())
    assert record["definition"]["overrides"] == SMALL and record["definition"]["preset"] == "tiny"
    assert record["changes"] == []
    assert started(options(tmp_path, shapes8)) == run_uri  # the same definition: a resume

    with pytest.raises(RunConflict, match=r"train\.r1_gamma: 10\.0 before, 5\.0 now; use another --name .*"
                                          r"--allow-changes"):
        describe(options(tmp_path, shapes8, overrides=SMALL + ["train.r1_gamma=5"]))
    with pytest.raises(RunConflict, match=r"flips \(--no-flip\): True before, False now"):
        describe(options(tmp_path, shapes8, flip=False))
    # another preset file with the same content under another name is the same run
    from alae_ray.core.config import load_config, save_yaml

    save_yaml(load_config("tiny", SMALL + ["name=renamed"]), tmp_path / "copy.yaml")
    describe(options(tmp_path, shapes8, preset=str(tmp_path / "copy.yaml"), overrides=[]))


def test_other_data_is_another_run_wherever_it_lies(tmp_path, shapes8):
    import shutil

    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source
    from alae_ray.train.run import describe

    started(options(tmp_path, shapes8))
    moved = shutil.copytree(shapes8, tmp_path / "moved")  # the same images at another path: the same run
    describe(options(tmp_path, str(moved)))
    other = str(tmp_path / "other")
    prepare(shapes_source(64, 8, seed=1), other, PrepareOptions(progress=False))
    with pytest.raises(RunConflict, match=r"the dataset's content \(digest\): [0-9a-f]{64} before, [0-9a-f]{64} now"):
        describe(options(tmp_path, other))


def test_continuing_with_changes_is_recorded(tmp_path, shapes8):
    started(options(tmp_path, shapes8))
    opts = options(tmp_path, shapes8, overrides=SMALL + ["train.r1_gamma=5", "train.ema_kimg=2"], allow_changes=True)
    started(opts)
    record = json.loads((tmp_path / "runs" / "r" / DEFINITION_FILE).read_text())
    assert record["definition"]["config"]["train"]["r1_gamma"] == 5
    [change] = record["changes"]
    assert change["differences"] == ["train.ema_kimg: 1.0 before, 2.0 now", "train.r1_gamma: 10.0 before, 5.0 now"]
    assert change["before"]["config"]["train"]["r1_gamma"] == 10.0
    started(options(tmp_path, shapes8, overrides=opts.overrides))  # now that is the run's definition


def test_a_refused_rerun_exits_non_zero_with_one_line_before_ray_starts(tmp_path, shapes8, capsys):
    from alae_ray.cli import main

    started(options(tmp_path, shapes8))
    code = main(["train", "--preset", "tiny", "--data", shapes8, "--storage", str(tmp_path / "runs"), "--name", "r",
                 *sum((["--set", o] for o in SMALL + ["train.seed=3"]), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"alae-ray train: error: run {tmp_path / 'runs' / 'r'} was started with another definition: "
                   "train.seed: 0 before, 3 now; use another --name for a new run, or --allow-changes to continue "
                   "this one with the changes"]


def test_an_unreadable_record_is_named(tmp_path, shapes8):
    from alae_ray.train.run import describe

    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / DEFINITION_FILE).write_text("{not json")
    with pytest.raises(RunConflict, match=rf"run {tmp_path / 'runs' / 'r'}: unreadable run\.json"):
        describe(options(tmp_path, shapes8))


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs" / "r")
    return f"{request.getfixturevalue('s3_bucket')}/runs/r"


def read_lease(run_dir: str) -> dict | None:
    from alae_ray.data.storage import DatasetError, read_bytes, resolve

    try:
        return json.loads(read_bytes(resolve(run_dir), LEASE_FILE))
    except DatasetError:
        return None


def test_a_second_writer_is_refused_while_the_first_holds_the_run(run_dir):
    with RunLease(run_dir) as first:
        held = read_lease(run_dir)
        assert held["owner"] == first.me["owner"] and held["pid"] == os.getpid()
        with pytest.raises(RunConflict, match=rf"run {run_dir} is being written by another process "
                                              rf"\(alae-ray train, pid {os.getpid()} on {socket.gethostname()}"):
            RunLease(run_dir).acquire()
    assert read_lease(run_dir) is None  # given back
    with RunLease(run_dir):  # and free again
        pass


def test_a_lapsed_lease_or_a_dead_owner_on_this_host_frees_the_run(run_dir):
    from alae_ray.data.storage import resolve, write_bytes_atomic

    loc = resolve(run_dir)
    lapsed = {"owner": "x", "host": "elsewhere", "pid": 1, "command": "alae-ray train", "since": "then",
              "expires": time.time() - 1}
    write_bytes_atomic(loc, LEASE_FILE, json.dumps(lapsed).encode())
    with RunLease(run_dir):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    crashed = {**lapsed, "host": socket.gethostname(), "pid": int(dead.stdout), "expires": time.time() + 100}
    write_bytes_atomic(loc, LEASE_FILE, json.dumps(crashed).encode())
    with RunLease(run_dir):
        pass
    elsewhere = {**lapsed, "expires": time.time() + 100}  # live, on another host: not ours to judge
    write_bytes_atomic(loc, LEASE_FILE, json.dumps(elsewhere).encode())
    with pytest.raises(RunConflict, match=r"pid 1 on elsewhere, since then\); stop that one, or use another --name"):
        RunLease(run_dir).acquire()


def test_samples_that_fail_after_a_checkpoint_are_warnings(tmp_path):
    """A real failure (the artifacts folder is a file): each try is a warning, none raises."""
    import torch

    from alae_ray.train.artifacts import attempt, save_grid

    blocked = tmp_path / "artifacts"
    blocked.write_text("a file where the folder should be")
    warnings = []
    ok = attempt("writing the sample grids", lambda: save_grid(torch.zeros(1, 3, 4, 4), blocked / "g.png"),
                 warnings.append, tries=2, wait_s=0.01)
    assert not ok and len(warnings) == 2
    assert warnings[0].startswith("writing the sample grids failed (try 1 of 2: FileExistsError")
    assert warnings[1].endswith("trying again at the next checkpoint")
    assert attempt("nothing", lambda: None, warnings.append)


def test_an_upload_that_failed_is_sent_whole_at_the_next_checkpoint(tmp_path, s3_bucket):
    from alae_ray.data.storage import DatasetError, list_files, resolve
    from alae_ray.train.artifacts import upload

    out = tmp_path / "artifacts"
    out.mkdir()
    (out / "a.txt").write_text("a")
    (out / "b.txt").write_text("b")
    with pytest.raises(DatasetError, match="no-such-bucket-alae"):
        upload(out, "s3://no-such-bucket-alae/x")  # a real failure: the bucket does not exist
    assert upload(out, f"{s3_bucket}/art") == ["a.txt", "b.txt"]  # nothing counted as sent
    (out / "c.txt").write_text("c")
    assert upload(out, f"{s3_bucket}/art") == ["c.txt"]
    assert list_files(resolve(f"{s3_bucket}/art"), "") == ["a.txt", "b.txt", "c.txt"]


def test_a_run_is_described_once_as_plain_data(tmp_path, shapes8, monkeypatch):
    """describe() resolves what was asked into a RunSpec whose dict (what the workers get) holds JSON
    types only and reads back equal; relative paths are resolved where the driver stands, not where a
    worker does; a given config (a Tune trial's) is used as it is."""
    from alae_ray.core.config import load_config
    from alae_ray.core.schedule import total_kimg
    from alae_ray.train.run import describe
    from alae_ray.train.spec import RunSpec

    monkeypatch.chdir(tmp_path)
    spec = describe(options(tmp_path, shapes8, storage="runs", overrides=SMALL + ["train.r1_gamma=3"],
                            validate="shapes", keep_best="val_left"))
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.storage == str(tmp_path / "runs") and spec.run_uri == str(tmp_path / "runs" / "r")
    assert spec.artifacts_dir == tmp_path / "runs" / "r" / "artifacts" and spec.artifacts_upload is None
    assert spec.config.train.r1_gamma == 3 and spec.levels == (4, 8) and spec.preset == "tiny"
    assert spec.validation.judge == "shapes" and spec.validation.keep_best == "val_left"
    assert spec.max_kimg == pytest.approx(total_kimg(spec.config)) and spec.start_kimg == 0
    trial = load_config("tiny", SMALL + ["train.r1_gamma=7"])
    given = describe(options(tmp_path, shapes8, name="trial"), config=trial)
    assert given.config == trial and given.preset is None and given.name == "trial"
