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

pytestmark = pytest.mark.e2e


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
