"""S3-compatible stores beyond moto: rclone's S3 server on loopback, with no extra settings.

pyarrow's multipart uploads carry the AWS SDKs' newer default checksums, which rclone's server
answers with HTTP 411; alae-ray asks for checksums only where required whenever the endpoint is not
AWS (``alae_ray.data.storage.compatible_checksums``), so prepare, verify and read work as on AWS.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from alae_ray.cli import main
from alae_ray.data import read_level_numpy
from alae_ray.data.idx import load_mnist


def test_prepare_verify_and_read_on_rclone(rclone_bucket, shared_data, capsys, monkeypatch):
    for key in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(key, raising=False)  # nothing set by the user
    uri = f"{rclone_bucket}/mnist"
    assert main(["prepare", str(shared_data / "mnist-t10k"), uri, "--quiet", "--test-count", "1000"]) == 0
    capsys.readouterr()
    assert main(["data", "info", uri, "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"28": {"train": 9000, "test": 1000}} and info["verify"]["ok"]
    images, labels = load_mnist(shared_data / "mnist-t10k", "t10k")
    d = read_level_numpy(uri, 28, "test")
    assert np.array_equal(d["image"][:, 0], images[d["id"]]) and np.array_equal(d["label"], labels[d["id"]])


def test_storage_errors_are_one_line(rclone_bucket, shared_data, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-0123456789")
    assert main(["data", "info", f"{rclone_bucket}/mnist"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and rclone_bucket in err


@pytest.mark.parametrize("server", ["s3_bucket", "rclone_bucket"])
def test_a_run_directory_on_s3_serves_its_newest_checkpoint(server, request, tmp_path, train_checkpoint, capsys):
    """serve/eval/export/load given an s3:// run directory take its newest complete checkpoint (listed,
    not downloaded wholesale) and say which."""
    import alae_ray
    from alae_ray.data.storage import resolve
    from alae_ray.infra.checkpoints import locate_checkpoint
    from alae_ray.serve.cli import precheck

    run = tmp_path / "run"
    train_checkpoint(run / "checkpoint_2026-01-01_00-00-00.000000", kimg=0.064)
    train_checkpoint(run / "checkpoint_2026-01-01_00-00-01.000000", kimg=0.032)  # newer name, fewer images
    (run / "checkpoint_2026-01-01_00-00-02.000000").mkdir()
    (run / "checkpoint_2026-01-01_00-00-02.000000" / "config.json").write_text("{}")  # an upload cut short
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    uri = f"{request.getfixturevalue(server)}/runs/tiny"
    loc = resolve(uri)
    for f in run.rglob("*"):  # file by file: rclone's server cannot create directory markers
        if f.is_file():
            with loc.fs.open_output_stream(f"{loc.path}/{f.relative_to(run).as_posix()}") as out:
                out.write(f.read_bytes())

    newest = f"{uri}/checkpoint_2026-01-01_00-00-00.000000"
    assert locate_checkpoint(uri) == newest and locate_checkpoint(newest) == newest
    assert precheck(uri + "/") == newest
    assert f"alae-ray serve: --checkpoint {uri}/: using its newest checkpoint {newest}" in capsys.readouterr().err
    assert alae_ray.load(uri, device="cpu").progress["images_seen"] == 64
    assert main(["export", uri, "--out", str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported" / "progress.json").read_text())["exported_from"] == newest
    with pytest.raises(ValueError, match="no complete checkpoint_"):
        precheck(f"{uri}-elsewhere")
