"""``alae-ray import-authors``: their checkpoints in, ordinary alae-ray checkpoints out; bad input refused.

Downloads are tested against a real HTTP server on loopback serving a copy of the fixture checkpoint
under a released file's name; the real mirrors cannot be reached from here.
"""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import shutil
import threading

import pytest
import torch

from alae_ray.cli import main
from alae_ray.core.checkpoint import load_model, read_checkpoint


@pytest.fixture(scope="module")
def ref(shared_data):
    return shared_data / "authors-reference"


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["import-authors", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_import_writes_a_checkpoint_that_loads(ref, tmp_path, capsys):
    out = tmp_path / "small"
    rc, stdout, err = cli(capsys, ref / "small_style.pth", "--out", out, "--config", ref / "small_style.yaml")
    assert rc == 0, err
    assert "F 8,448, G 170,652, E 208,976, D 4,224" in stdout
    cfg, tensors, progress = read_checkpoint(out)
    assert cfg.name == "small_style" and cfg.model.max_resolution == 32
    assert progress["level"] == 3 and progress["imported_from"].endswith("small_style.pth")
    assert not any(k.startswith(("opt_", "rng.")) for k in tensors)  # networks only: a fresh optimizer on fine-tuning
    ema, _, _ = load_model(out, ema=True)
    raw, _, _ = load_model(out, ema=False)
    z = torch.randn(3, 32)
    assert not torch.allclose(ema.F(z), raw.F(z))  # the EMA copies and their training networks
    assert [p.name for p in tmp_path.iterdir()] == ["small"]  # no temporary left behind
    # the same again refuses to overwrite; --force replaces a checkpoint
    rc, _, err = cli(capsys, ref / "small_style.pth", "--out", out, "--config", ref / "small_style.yaml")
    assert rc == 2 and "already exists" in err and "--force" in err
    assert cli(capsys, ref / "small_style.pth", "--out", out, "--config", ref / "small_style.yaml", "--force")[0] == 0


def test_a_checkpoint_that_does_not_fit_names_the_first_key(ref, tmp_path, capsys):
    rc, _, err = cli(capsys, ref / "small_style.pth", "--out", tmp_path / "x", "--config", ref / "fused_style.yaml")
    assert rc == 2
    assert "discriminator_s/from_rgb.0.from_rgb.weight has shape (16, 3, 1, 1), this configuration expects (4, 3, 1, 1)" in err
    rc, _, err = cli(capsys, ref / "fused_style.pth", "--out", tmp_path / "x", "--preset", "celeba128")
    assert rc == 2 and "expects" in err and "128px, latent 256" in err
    rc, _, err = cli(capsys, ref / "small_style.pth", "--out", tmp_path / "x")
    assert rc == 2 and "--preset" in err and "--config" in err
    assert not (tmp_path / "x").exists()


def _bad_files(ref, tmp_path):
    good = (ref / "small_style.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "image.pth").write_bytes((ref.parent / "faces128" / "00000.png").read_bytes())
    (tmp_path / "empty.pth").write_bytes(b"")

    class Evil:  # a pickle that would run a command when loaded
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"models": {"generator_s": Evil()}}, tmp_path / "evil.pth")
    # The legacy (non-zip) format is the path CVE-2025-32434 used to run code through weights_only=True
    # on torch < 2.6; the lock's torch refuses it like the zip format.
    torch.save({"models": {"generator_s": Evil()}}, tmp_path / "evil_legacy.pth",
               _use_new_zipfile_serialization=False)
    with open(tmp_path / "plain.pth", "wb") as f:  # a plain pickle of an unknown class, not a torch file
        pickle.dump(Evil(), f)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")  # a torch file, but not theirs
    return {"truncated": "truncated or corrupt", "image": "not a readable torch checkpoint",
            "empty": "not a readable torch checkpoint", "evil": "would call posix.system",
            "evil_legacy": "would call posix.system",
            "plain": "not a readable torch checkpoint", "other": "no 'models' dictionary"}


def test_bad_files_are_refused_without_running_anything(ref, tmp_path, capsys):
    for name, message in _bad_files(ref, tmp_path).items():
        out = tmp_path / f"out-{name}"
        rc, _, err = cli(capsys, tmp_path / f"{name}.pth", "--out", out, "--config", ref / "small_style.yaml")
        assert rc == 2 and message in err, (name, err)
        assert "Traceback" not in err and not out.exists()
    assert not (tmp_path / "pwned").exists()


def test_unknown_release_name(tmp_path, capsys):
    rc, _, err = cli(capsys, "ffhq/model_999.pth", "--out", tmp_path / "x")
    assert rc == 2 and "neither a file nor a released model" in err and "ffhq/model_157.pth" in err
    assert not (tmp_path / "x").exists()


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set = set()

    def log_message(self, *args):  # quiet
        pass

    def copyfile(self, source, outputfile):
        if any(self.path.endswith(t) for t in self.truncate):  # announce the whole file, send half of it
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            return
        shutil.copyfileobj(source, outputfile)


@pytest.fixture()
def mirror(ref, tmp_path, monkeypatch):
    """A real HTTP server on loopback holding the fixture checkpoint as ffhq/model_157.pth and
    celeba/model_final.pth; the cache in tmp_path."""
    root = tmp_path / "mirror"
    for name in ("ffhq/model_157.pth", "celeba/model_final.pth"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ref / "small_style.pth", root / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ALAE_RAY_RELEASES_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("ALAE_RAY_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "authors"
    server.shutdown()


def test_a_released_name_downloads_once(ref, mirror, tmp_path, capsys):
    rc, _, err = cli(capsys, "ffhq", "--out", tmp_path / "a", "--config", ref / "small_style.yaml")
    assert rc == 0, err
    cached = mirror / "ffhq" / "model_157.pth"
    assert cached.read_bytes() == (ref / "small_style.pth").read_bytes()
    assert "model_157.pth" in err  # the progress bar names the file
    rc, _, err = cli(capsys, "ffhq/model_157.pth", "--out", tmp_path / "b", "--config", ref / "small_style.yaml")
    assert rc == 0 and "model_157.pth:" not in err  # from the cache: no second download
    assert read_checkpoint(tmp_path / "b")[2]["imported_from"] == "ffhq/model_157.pth"


def test_a_truncated_download_is_an_error_and_leaves_nothing(ref, mirror, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_Handler, "truncate", {"model_final.pth"})
    rc, _, err = cli(capsys, "celeba", "--out", tmp_path / "c", "--config", ref / "small_style.yaml", "--quiet")
    assert rc == 2 and "cannot download celeba/model_final.pth" in err
    assert "incomplete download" in err or "IncompleteRead" in err or "bytes" in err
    assert not (tmp_path / "c").exists()
    assert not (mirror / "celeba").exists() or not any((mirror / "celeba").iterdir())


def test_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setenv("ALAE_RAY_RELEASES_URL", f"http://127.0.0.1:{port}/")
        monkeypatch.setenv("ALAE_RAY_CACHE", str(tmp_path / "cache"))
        rc, _, err = cli(capsys, "bedroom", "--out", tmp_path / "d", "--quiet")
    assert rc == 2 and "cannot download bedroom/model_final.pth" in err and "Connection refused" in err
    assert "Google Drive id 1gmYbc6Z8qJHJwICYDsB4aBMxXjnKeXA_" in err and not (tmp_path / "d").exists()


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


def test_serve_eval_and_train_accept_it(ref, tmp_path, capsys):
    import numpy as np

    from alae_ray.core.config import ConfigError
    from alae_ray.eval.sampling import open_model
    from alae_ray.serve.engine import open_engine
    from alae_ray.train.run import TrainOptions, describe

    out = tmp_path / "small"
    assert cli(capsys, ref / "small_style.pth", "--out", out, "--config", ref / "small_style.yaml")[0] == 0
    engine = open_engine(str(out), device="cpu")
    assert engine.info()["resolution"] == 32 and engine.info()["style_layers"] == 8
    faces = engine.generate(np.array([1, 2]), np.array([0.7, 0.7]))
    assert faces.shape == (2, 32, 32, 3) and faces.dtype == np.uint8
    model = open_model(str(out))
    assert (model.level, model.resolution) == (3, 32)
    assert model.reconstruct(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    # train --init: the checkpoint's networks must be the preset's; checked before any data or Ray
    with pytest.raises(ConfigError, match="its model differs from preset 'tiny'.*latent_size: 32 there, 64 here"):
        describe(TrainOptions(preset="tiny", init_checkpoint=str(out)))
