"""``alae_ray.load``: the Python API for notebooks, on an imported authors' model and on our own runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import alae_ray
from alae_ray.core.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def ref(shared_data):
    return shared_data / "authors-reference"


@pytest.fixture(scope="module")
def small(ref, tmp_path_factory):
    """The authors' small fixture model, imported, and what their networks computed for it."""
    from alae_ray.releases import import_authors

    out = tmp_path_factory.mktemp("api") / "small"
    import_authors(str(ref / "small_style.pth"), out, config=str(ref / "small_style.yaml"), progress=False)
    return alae_ray.load(out, device="cpu"), load_file(str(ref / "small_style_io.safetensors"))


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_the_api_computes_what_the_authors_networks_compute(small):
    model, io = small
    assert (model.resolution, model.latent_size, model.style_layers, model.level) == (32, 32, 8, 3)
    w = model.encode(io["E.x"])  # float [N, 3, 32, 32] in [-1, 1]
    assert close(w, io["E.lod3.blend1.Z"][:, 0])
    assert close(model.decode(w, noise=False), io["R.lod3.blend1.out"])
    assert close(model.generate(z=io["F.z"], psi=1.0, noise=False), io["G.lod3.blend1.out"])
    assert close(model.generate(z=io["F.z"], noise=False), io["G.trunc.lod3.blend1.out"])  # the model's psi 0.7
    assert close(model.generate(z=io["F.z"], psi=0.7, cutoff=5, noise=False), io["G.trunc_cut5.lod3.blend1.out"])
    w2 = model.network.F(io["G.mix.z2"])
    assert close(model.mix(w2, model.network.F(io["F.z"]), range(3, 8), noise=False), io["G.mix.lod3.blend1.out"])


def test_image_forms_and_conventions(small, shared_data):
    model, io = small
    x = io["E.x"][:2]
    u8 = model.to_uint8(x)  # [2, 32, 32, 3] uint8
    assert u8.dtype == np.uint8 and u8.shape == (2, 32, 32, 3)
    from_u8 = model.encode(u8)
    assert torch.allclose(from_u8, model.encode(list(u8)), atol=1e-6)  # a list of [R, R, C] arrays
    assert torch.allclose(from_u8, model.encode(model.to_pil(x)), atol=1e-6)  # PIL images
    assert torch.allclose(from_u8, model.encode(torch.from_numpy(u8)), atol=1e-6)  # a uint8 tensor
    big = np.asarray(Image.fromarray(u8[0]).resize((96, 64)))  # any size: resized to 32x32
    assert model.encode(big).shape == (1, 32)
    grey = np.asarray(Image.fromarray(u8[0]).convert("L"))  # [H, W]: grey becomes RGB
    assert model.encode(grey).shape == (1, 32)
    face = shared_data / "faces128" / "00000.png"  # a path: read, 128x128 resized to 32x32
    assert torch.allclose(model.encode(face), model.encode(Image.open(face)), atol=1e-6)
    assert model.encode([str(face), face]).shape == (2, 32)
    out = model.reconstruct(u8)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        model.encode(u8.astype(np.float64))
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        model.encode(torch.zeros(1, 3, 16, 16))
    assert len(model.to_pil(out)) == 2 and model.to_pil(out)[0].size == (32, 32)


def test_results_are_deterministic_and_batch_independent(small):
    model, io = small
    x = io["E.x"]
    a = model.reconstruct(x)
    assert torch.equal(a, model.reconstruct(x))  # noise on, from a fixed seed
    assert close(model.reconstruct(x[3:4]), a[3:4])  # alone or in a batch (up to rounding)
    assert not torch.allclose(a, model.reconstruct(x, noise_seed=1), atol=1e-4)  # the noise matters
    assert not torch.allclose(a, model.reconstruct(x, noise=False), atol=1e-4)
    g = model.generate(seed=[5, 7])
    assert close(model.generate(seed=7)[0], g[1])  # a seed is one image
    assert torch.equal(model.latents([7])[0], torch.randn(32, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(g[0], g[1])
    per_image_psi = model.generate(seed=[5, 5], psi=[1.0, 0.0])
    assert close(per_image_psi[0], model.generate(seed=5, psi=1.0)[0])
    with pytest.raises(ValueError, match="exactly one of seed"):
        model.generate()


def test_bands_and_mixing(small):
    model, io = small
    assert [model.band(b) for b in ("coarse", "middle", "fine")] == [range(0, 2), range(2, 6), range(6, 8)]
    faces = io["E.x"][:2]
    mixed = model.mix(faces[:1], faces[1:], "coarse")  # images are encoded first
    w = model.encode(faces)
    assert close(mixed, model.mix(w[:1], w[1:], range(0, 2)))  # encoded one at a time: rounding only
    with pytest.raises(ValueError, match="unknown band"):
        model.mix(w[:1], w[1:], "coarser")
    with pytest.raises(ValueError, match="as many sources"):
        model.mix(w, w[:1])


def test_run_directories_and_missing_checkpoints(tmp_path, train_checkpoint):
    run = tmp_path / "run"
    old = train_checkpoint(run / "checkpoint_2026-01-01_00-00-00.000000", kimg=0.032)
    new = train_checkpoint(run / "checkpoint_2026-01-01_00-00-01.000000", kimg=0.064)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # what Ray Train leaves beside them
    (run / "checkpoint_2026-01-01_00-00-02.000000").mkdir()  # an incomplete one is skipped
    model = alae_ray.load(run, device="cpu")
    assert model.progress["images_seen"] == 64
    assert alae_ray.load(old, device="cpu").progress["images_seen"] == 32
    assert "tiny" in repr(model) and new.name
    with pytest.raises(CheckpointError, match="not found"):
        alae_ray.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="incomplete"):
        alae_ray.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="CUDA is not available") if not torch.cuda.is_available() else _nothing():
        alae_ray.load(run, device="cuda")
    with pytest.raises(ValueError, match="level 7 is outside"):
        alae_ray.load(run, level=7)
    assert alae_ray.load(run, level=1).resolution == 8


def test_old_format_checkpoints_get_a_clear_message(tmp_path, train_checkpoint):
    """A checkpoint of the networks before they were made the authors' (no "format" in progress.json)."""
    import json

    from safetensors.torch import save_file

    ckpt = train_checkpoint(tmp_path / "old", kimg=0.032)
    tensors = load_file(str(ckpt / "state.safetensors"))
    save_file({k.replace("map_blocks", "layers"): v for k, v in tensors.items()}, str(ckpt / "state.safetensors"))
    progress = json.loads((ckpt / "progress.json").read_text())
    (ckpt / "progress.json").write_text(json.dumps({k: v for k, v in progress.items() if k != "format"}))
    with pytest.raises(CheckpointError, match="format 1.*import-authors"):
        alae_ray.load(ckpt, device="cpu")


def test_the_mnist_model_takes_and_returns_images(tmp_path, train_checkpoint, shared_data):
    from alae_ray.data.idx import load_mnist

    ckpt = train_checkpoint(tmp_path / "mnist", preset="mnist", kimg=0.256, images=256)
    model = alae_ray.load(ckpt, device="cpu")
    assert (model.resolution, model.channels, model.latent_size) == (28, 1, 50)
    digits, _ = load_mnist(shared_data / "mnist-t10k", "t10k")
    w = model.encode(digits[:4])  # uint8 [4, 28, 28]: grey images
    assert w.shape == (4, 50)
    x = model.decode(w)
    assert x.shape == (4, 1, 28, 28) and model.generate(seed=[1, 2]).shape == (2, 1, 28, 28)
    # [-1, 1] outside, the authors' [0, 1] inside: a white pixel reaches E as 1.0
    assert torch.allclose(model._to_net(torch.ones(1, 1, 28, 28)), torch.ones(1, 784))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_edit_directions(small):
    model, io = small
    d = model.directions(5)
    assert d.shape == (5, 32) and torch.allclose(d @ d.T, torch.eye(5), atol=1e-5)  # orthonormal
    assert torch.equal(model.directions(5), d)  # computed once
    w = model.encode(io["E.x"][:2])
    same = model.edit(w, 0, 0.0)
    assert close(same, model.decode(w))
    moved = model.edit(w, 0, [-3.0, 0.0, 3.0])  # [2 x 3 strengths]
    assert moved.shape == (6, 3, 32, 32) and close(moved[1], same[0]) and close(moved[4], same[1])
    assert not torch.allclose(moved[0], moved[2], atol=1e-3)
    coarse = model.edit(w, 1, 3.0, layers="coarse")  # only the 4x4 style inputs move
    assert not torch.allclose(coarse, same, atol=1e-3)


def test_refine_lowers_the_reconstruction_error(small):
    model, io = small
    x = io["E.x"][:2]
    losses = []
    w, refined = model.refine(x, steps=20, lr=0.02, progress=lambda step, loss: losses.append((step, loss)))
    encoder = model.reconstruct(x)
    assert w.shape == (2, 32) and [s for s, _ in losses] == list(range(1, 21))
    assert (refined - x).pow(2).mean() < (encoder - x).pow(2).mean()  # sharper than the encoder's
    assert losses[-1][1] < losses[0][1]
    w_layers, _ = model.refine(x, steps=2, per_layer=True)
    assert w_layers.shape == (2, 8, 32)
    with pytest.raises(ValueError, match="between 0 and 1000"):
        model.refine(x, steps=5000)


def test_export_keeps_what_inference_needs(tmp_path, train_checkpoint, capsys):
    from alae_ray.cli import main
    from alae_ray.core.checkpoint import read_checkpoint

    run = tmp_path / "run"
    train_checkpoint(run / "checkpoint_1", kimg=0.064)
    assert main(["export", str(run), "--out", str(tmp_path / "small")]) == 0
    assert "the EMA networks and the w average" in capsys.readouterr().out
    _, tensors, progress = read_checkpoint(tmp_path / "small")
    assert tensors and all(k.startswith("ema.") for k in tensors) and progress["inference_only"]
    full = (run / "checkpoint_1" / "state.safetensors").stat().st_size
    assert (tmp_path / "small" / "state.safetensors").stat().st_size < full / 2
    a, b = alae_ray.load(run, device="cpu"), alae_ray.load(tmp_path / "small", device="cpu")
    z = torch.randn(2, 64)
    assert torch.equal(a.generate(z=z), b.generate(z=z))
    assert main(["export", str(run), "--out", str(tmp_path / "small")]) == 2  # exists: refused
    from alae_ray.core.config import load_config
    from alae_ray.core.phases import ALAEPhases

    ph = ALAEPhases(load_config("tiny"))  # training can start from it (train --init)
    ph.load(*read_checkpoint(tmp_path / "small")[1:])
    assert all(torch.equal(p, q) for p, q in zip(ph.model.parameters(), ph.ema.parameters()))
