"""Serving without Ray: upload decoding and validation, style ranges, JSON values, the engine, the service.

The byte builders (``png_bytes``, ``raw_png``, ...) are in helpers.py, shared with the HTTP tests.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from helpers import bad_uploads, gradient, png_bytes, variants
from PIL import Image

from alae_ray.serve.inputs import (
    InputError,
    Limits,
    decode_image,
    encode_png,
    fit_square,
    parse_json,
    parse_psi,
    parse_seed,
    parse_w,
    strip,
    style_grid,
)
from alae_ray.serve.styles import band_layers, describe_bands, parse_layers

# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(variants()))
def test_variants_become_rgb8_at_resolution(name):
    out = decode_image(variants()[name], 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.std() > 5  # real content, not a blank


def test_sixteen_bit_and_eight_bit_agree():
    v = variants()
    a, b = decode_image(v["gray8"], 32).astype(int), decode_image(v["gray16"], 32).astype(int)
    assert np.abs(a - b).max() <= 1
    a, b = decode_image(v["rgb_png"], 32).astype(int), decode_image(v["rgb16"], 32).astype(int)
    assert np.abs(a - b).max() <= 1


def test_alpha_is_composited_over_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    out = decode_image(png_bytes(Image.fromarray(rgba, "RGBA")), 8)
    assert (out == 255).all()


def test_non_square_is_centre_cropped_then_area_resized():
    img = gradient(80, 40)
    out = decode_image(png_bytes(Image.fromarray(img)), 20)
    crop = Image.fromarray(img[:, 20:60])  # the centred 40x40 square
    want = np.asarray(crop.resize((20, 20), Image.Resampling.BOX))
    assert np.array_equal(out, want)
    # smaller than the model resolution: enlarged, still square
    assert fit_square(Image.fromarray(gradient(10, 6)), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_bad_uploads_are_refused_with_a_status(name):
    data, status = bad_uploads()[name]
    with pytest.raises(InputError) as err:
        decode_image(data, 32)
    assert err.value.status == status
    assert "Traceback" not in err.value.message and "/" not in err.value.message.split(":")[0]


def test_byte_and_pixel_limits():
    data = png_bytes(Image.fromarray(gradient(64, 64)))
    with pytest.raises(InputError) as err:
        decode_image(data, 32, Limits(max_upload_bytes=len(data) - 1))
    assert err.value.status == 413 and "limit" in err.value.message
    with pytest.raises(InputError) as err:
        decode_image(data, 32, Limits(max_pixels=64 * 64 - 1))
    assert err.value.status == 413 and "64x64" in err.value.message
    assert decode_image(data, 32, Limits(max_upload_bytes=len(data), max_pixels=64 * 64)).shape == (32, 32, 3)


def test_png_roundtrip_grid_and_strip():
    img = gradient(16, 16)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(img)))), img)
    src, dst = np.zeros((3, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 9, np.uint8)
    cells = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1, 1, 1) * np.ones((1, 1, 4, 4, 3), np.uint8)
    grid = style_grid(src, dst, cells)
    assert grid.shape == (12, 16, 3)
    assert (grid[:4, :4] == 255).all() and (grid[:4, 4:] == 0).all() and (grid[4:, :4] == 9).all()
    assert (grid[8:12, 12:16] == cells[1, 2]).all()
    assert strip(np.stack([img, img])).shape == (16, 32, 3)


# --- values ------------------------------------------------------------------------------------


def test_style_bands_follow_the_paper_and_scale_down():
    # 1024x1024 (9 levels, 18 inputs): the paper's Figure 9 bands
    assert band_layers(9) == {"coarse": range(0, 4), "middle": range(4, 8), "fine": range(8, 18)}
    assert band_layers(7)["fine"] == range(8, 14)  # 256x256
    # tiny (4x4 -> 32x32): coarse = 4x4, middle = 8-16, fine = 32
    assert band_layers(4) == {"coarse": range(0, 2), "middle": range(2, 6), "fine": range(6, 8)}
    assert describe_bands(4)["middle"] == {"layers": [2, 6], "resolutions": "8x8-16x16"}
    for n in range(1, 10):  # bands never overlap and stay inside the model
        layers = [i for r in band_layers(n).values() for i in r]
        assert len(layers) == len(set(layers)) and all(0 <= i < 2 * n for i in layers)


@pytest.mark.parametrize("spec,want", [("coarse", range(0, 2)), (" Fine ", range(6, 8)), ("0:4", range(0, 4)),
                                       ("3", range(3, 4)), ("7:8", range(7, 8))])
def test_parse_layers_ok(spec, want):
    assert parse_layers(spec, 4) == want


@pytest.mark.parametrize("spec", ["", "coarsest", "4:2", "3:3", "0:9", "8", "-1:2", "1:2:3", "a:b", "1.5"])
def test_parse_layers_rejects(spec):
    with pytest.raises(InputError) as err:
        parse_layers(spec, 4)
    assert err.value.status == 422


def test_empty_band_is_rejected_for_tiny_models():
    with pytest.raises(InputError, match="middle"):
        parse_layers("middle", 2)


def test_parse_w():
    w = parse_w([0.5] * 4, 4, 3)
    assert w.shape == (3, 4) and w.dtype == np.float32
    assert parse_w([[float(i)] * 4 for i in range(3)], 4, 3)[2, 0] == 2.0
    for bad in ([0.5] * 3, [], "x", None, [[0.0] * 4] * 2, [0.1, 0.2, "a", 0.3], [1e309] * 4, [True] * 4,
                [0.0, 0.0, 0.0, 1e6], [[0.0] * 4, [0.0] * 3, [0.0] * 4]):
        with pytest.raises(InputError) as err:
            parse_w(bad, 4, 3)
        assert err.value.status == 422, bad


def test_parse_json_and_scalars():
    assert parse_json(b'{"seed": 3}') == {"seed": 3}
    for body in (b"", b"{", b'{"w": NaN}', b'{"w": [Infinity]}', b"\xff\xfe"):
        with pytest.raises(InputError) as err:
            parse_json(body)
        assert err.value.status == 400
    assert parse_seed(7) == 7 and parse_seed("12") == 12 and parse_seed(3.0) == 3
    for bad in (-1, 1.5, "abc", 2**64, True, None, [1]):
        with pytest.raises(InputError):
            parse_seed(bad)
    assert parse_psi(0.7) == pytest.approx(0.7) and parse_psi("1") == 1.0
    for bad in (float("nan"), float("inf"), 5, -3, "x", None, True):
        with pytest.raises(InputError):
            parse_psi(bad)


# --- engine and service (real model, no Ray) ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, train_checkpoint):
    return train_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3, images=32)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from alae_ray.serve.engine import open_engine

    return open_engine(str(tiny_checkpoint), device="cpu", lpips=False)  # the same on every machine


def test_engine_matches_the_model(engine):
    imgs = np.stack([decode_image(v, 32) for v in list(variants().values())[:5]])
    w = engine.encode(imgs)
    assert w.shape == (5, 64) and np.isfinite(w).all()
    rec, w2 = engine.reconstruct(imgs)
    assert np.allclose(w, w2, atol=1e-5) and rec.shape == (5, 32, 32, 3)
    assert np.abs(engine.synthesize(w).astype(int) - rec.astype(int)).max() <= 1
    # one image alone gives what it gives inside a batch
    assert np.allclose(engine.encode(imgs[2:3]), w[2:3], atol=1e-4)
    # the serving grid of mixes: cell (d, s) is the API's mix, layer for layer
    from alae_ray.serve.service import Service

    got, rng = asyncio.run(Service(LocalBackend(engine), engine.info()).mix(list(imgs[:2]), list(imgs[2:4]), "0:2"))
    assert rng == range(0, 2) and got.images.shape == (4, 32, 32, 3)  # [D=2, S=2] cells
    ref = engine.model.mix(torch.from_numpy(w[1:2]), torch.from_numpy(w[3:4]), range(0, 2))
    assert np.abs(got.images[3].astype(int) - engine.model.to_uint8(ref)[0].astype(int)).max() <= 1


def test_device_choice():
    from alae_ray.serve.engine import pick_device

    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_generate_is_deterministic_and_truncates(engine):
    a = engine.generate(np.array([1, 2]), np.array([0.7, 0.7]))
    b = engine.generate(np.array([2]), np.array([0.7]))
    assert np.array_equal(a[1], b[0]) and not np.array_equal(a[0], a[1])
    # psi = 0 on every style input collapses every seed onto the average code (only noise differs)
    m = engine.model
    ws = m.styles(seed=[1, 2], psi=0.0, cutoff=m.style_layers)
    assert torch.equal(ws[0], ws[1]) and torch.equal(ws[0], m.network.w_avg[:m.style_layers])
    # psi = 1 leaves F(z) as it is
    assert torch.equal(m.styles(seed=[3], psi=1.0)[0, 0], m.map(m.latents([3]))[0])


def test_outputs_become_uint8_one_forward_chunk_at_a_time(engine):
    """More images than one forward pass holds: the same images as the API's one float32 result."""
    from alae_ray.api import MAX_FORWARD

    n = MAX_FORWARD + 3
    seeds, psis = np.arange(n), np.full(n, 0.7, np.float32)
    got = engine.generate(seeds, psis)
    m = engine.model
    want = m.to_uint8(m.generate(seeds.tolist(), psi=psis, cutoff=engine.info()["truncation_cutoff"]))
    # F maps each chunk's 3 seeds alone here and all 67 at once there: BLAS may round a batch of 3
    # and of 67 differently (float32 ulps), which moves a pixel at a rounding boundary by one level
    assert got.shape == (n, 32, 32, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    ws = engine.encode(got)
    assert np.array_equal(engine.synthesize(ws), m.to_uint8(m.decode(ws)))
    assert np.array_equal(engine.reconstruct(got)[0], m.to_uint8(m.reconstruct(got)))


def test_checkpoint_mismatch_names_the_checkpoint(tiny_checkpoint, tmp_path):
    import json
    import shutil

    from alae_ray.core.checkpoint import CheckpointError
    from alae_ray.serve.engine import open_engine

    bad = tmp_path / "mismatch"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["latent_size"] = 32
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mismatch.*does not match its config"):
        open_engine(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        open_engine(str(tmp_path / "nowhere"))


class LocalBackend:
    """The Service's backend over an Engine in this process (what the Serve deployment wraps)."""

    def __init__(self, engine):
        self.e = engine

    async def encode(self, images):
        return self.e.encode(images), 1

    async def synthesize(self, ws):
        return self.e.synthesize(ws), 1

    async def reconstruct(self, images):
        return (*self.e.reconstruct(images), 1)

    async def generate(self, seeds, psis):
        return self.e.generate(seeds, psis), 1

    async def refine(self, image, steps):
        events = []
        result = self.e.refine(image, steps, lambda step, loss: events.append(("step", step, loss)))
        for event in events:
            yield event
        yield ("done", *result)


def test_service_composites(engine):
    from alae_ray.serve.service import Service

    svc = Service(LocalBackend(engine), engine.info())
    faces = [decode_image(v, 32) for v in list(variants().values())[:4]]
    r, rng = asyncio.run(svc.mix(faces[:3], faces[3:], "coarse"))
    assert rng == range(0, 2) and r.images.shape == (3, 32, 32, 3)
    r = asyncio.run(svc.interpolate(faces[0], faces[1], "5"))
    assert r.images.shape == (5, 32, 32, 3)
    # the ends of the path are the two reconstructions
    rec = engine.reconstruct(np.stack(faces[:2]))[0]
    assert np.abs(r.images[[0, -1]].astype(int) - rec.astype(int)).max() <= 1
    for call in (svc.mix([], faces[:1], "coarse"), svc.mix(faces[:1] * 9, faces[:1], "coarse"),
                 svc.interpolate(faces[0], faces[1], 1), svc.generate(-5), svc.decode([1.0] * 3)):
        with pytest.raises(InputError):
            asyncio.run(call)


def test_service_refine_reports_progress(engine):
    from alae_ray.serve.service import Service

    svc = Service(LocalBackend(engine), engine.info())
    face = decode_image(list(variants().values())[0], 32)
    seen = []
    rec, refined, mse = asyncio.run(svc.refine(face, "12", lambda step, total, loss: seen.append((step, total))))
    assert seen == [(s, 12) for s in range(1, 13)]
    want = engine.refine(face, 12)
    assert np.array_equal(refined, want[1]) and np.array_equal(mse, want[2]) and mse[1] < mse[0]
    with pytest.raises(InputError):
        asyncio.run(svc.refine(face, "13000"))


def test_refinement_adds_lpips_when_its_weights_are_local(tiny_checkpoint, stand_in_weights, tmp_path, monkeypatch):
    from alae_ray.serve.engine import open_engine

    monkeypatch.delenv("ALAE_RAY_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no VGG16 file: never downloaded by a replica
    plain = open_engine(str(tiny_checkpoint), device="cpu")
    assert plain.lpips is None and plain.info()["refine_loss"] == "pixel"
    monkeypatch.setenv("TORCH_HOME", str(stand_in_weights))
    perceptual = open_engine(str(tiny_checkpoint), device="cpu")
    assert perceptual.info()["refine_loss"] == "pixel + LPIPS"
    assert open_engine(str(tiny_checkpoint), device="cpu", lpips=False).lpips is None
    face = decode_image(list(variants().values())[0], 32)
    _, a, mse_a = plain.refine(face, 8)
    _, b, mse_b = perceptual.refine(face, 8)
    assert mse_a[0] == mse_b[0] and not np.array_equal(a, b)  # same start, another objective


def test_the_ui_shows_refusals_as_messages_and_deletes_its_cache(engine, tmp_path):
    import gradio as gr

    from alae_ray.serve.service import Overloaded, Service
    from apps.gradio_app import CACHE_MAX_AGE_S, Examples, _shown, build_ui

    async def busy():
        raise Overloaded("the model is busy")

    with pytest.raises(gr.Error, match="the model is busy"):
        asyncio.run(_shown(busy)())
    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    for path in paths:
        Image.fromarray(gradient(32, 32)).save(path)
    blocks = build_ui(Service(LocalBackend(engine), engine.info()), Examples(str(tmp_path), paths, "Test images"))
    assert blocks.delete_cache == (CACHE_MAX_AGE_S, CACHE_MAX_AGE_S)


def test_a_model_of_the_shapes_is_offered_held_out_shapes(engine):
    """Not its own generations (which it reconstructs easily): the judge's held-out items, which no
    training set holds."""
    from PIL import Image

    from alae_ray.data.synthetic import generate
    from alae_ray.judges.shapes import HELD_OUT_START
    from alae_ray.serve.service import Service
    from apps.gradio_app import example_images

    examples = asyncio.run(example_images(Service(LocalBackend(engine), engine.info())))
    assert examples.label == "Held-out shapes (never in a training set)"
    shown = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in examples.paths])
    truth, _ = generate(np.arange(HELD_OUT_START, HELD_OUT_START + len(shown)), 32, 0)
    assert len(shown) == 6 and np.array_equal(shown, truth.transpose(0, 2, 3, 1))


def test_the_ui_speaks_of_what_the_model_was_trained_on():
    from apps.gradio_app import subject

    assert [subject(p)[0] for p in ("ffhq1024", "celebahq256", "bedroom256", "mnist", "tiny", "mine")] == [
        "faces", "faces", "bedrooms", "digits", "shapes", "images"]
    assert "face" in subject("ffhq1024")[1] and "bedroom" in subject("bedroom256")[1]


# --- deployment config and CLI (no cluster) ------------------------------------------------------


def test_serve_yaml_builds_with_typed_args():
    from pathlib import Path

    import yaml
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from alae_ray.serve import app as api_only
    from alae_ray.serve.app import ServeArgs
    from apps.gradio_app import build_app

    conf = ServeDeploySchema.model_validate(yaml.safe_load((Path(__file__).parents[2] / "deploy" / "serve.yaml").read_text()))
    assert conf.http_options.host == "127.0.0.1"
    app = conf.applications[0]
    assert app.import_path == "apps.gradio_app:build_app" == api_only.UI_APP
    # the API-only builder refuses to drop the UI silently, and builds with ui false
    with pytest.raises(ValueError, match="deploy apps.gradio_app:build_app for the UI"):
        api_only.build_app(app.args)
    assert type(api_only.build_app({**app.args, "ui": False})).__name__ == "Application"
    assert type(call_user_app_builder_with_args_if_necessary(build_app, app.args)).__name__ == "Application"
    for bad in ({"max_batch_images": "lots"}, {"max_batch_images": 0}, {"max_concurrent_refines": 0},
                {"max_queued_requests": 0}, {"chekpoint": "x"}):
        with pytest.raises(ValidationError):
            call_user_app_builder_with_args_if_necessary(build_app, {**app.args, **bad})
    # the former name still reads; the refinements' slots come on top of the batched calls'
    args = {k: v for k, v in app.args.items() if k != "max_batch_images"}
    with pytest.raises(ValidationError):
        ServeArgs(**args, max_batch_size=0)
    old = ServeArgs(**args, max_batch_size=8)
    assert old.max_batch_images == 8 and old.ongoing() == 64 + old.max_concurrent_refines


def test_cli_defaults_and_request_timeout_match_the_deployment_config():
    from pathlib import Path

    import yaml

    from alae_ray.cli import build_parser
    from alae_ray.serve.app import ServeArgs
    from alae_ray.serve.cli import REQUEST_TIMEOUT_S

    conf = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "serve.yaml").read_text())
    assert conf["http_options"]["request_timeout_s"] == REQUEST_TIMEOUT_S
    args = build_parser().parse_args(["serve", "--checkpoint", "x"])
    assert args.request_timeout_s == REQUEST_TIMEOUT_S
    defaults = ServeArgs(checkpoint="x")
    for key in ("max_batch_images", "max_concurrent_refines", "max_queued_requests"):
        assert getattr(args, key) == getattr(defaults, key) == conf["applications"][0]["args"][key], key


def test_cli_refuses_a_missing_checkpoint_before_starting_ray(tmp_path, capsys):
    from alae_ray.cli import main
    from alae_ray.serve.cli import root_message

    assert main(["serve", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["serve", "--checkpoint", str(tmp_path / "half")]) == 2
    assert "incomplete" in capsys.readouterr().err
    # the overload settings are refused in one line naming the flag, before the checkpoint is looked at
    for flag, value in (("--max-concurrent-refines", "0"), ("--max-queued-requests", "0"), ("--max-batch-images", "0")):
        assert main(["serve", "--checkpoint", str(tmp_path / "none"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {flag}: input should be greater than or equal to 1" in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--checkpoint", str(tmp_path / "none"), "--request-timeout-s", "0"])
    assert exit_.value.code == 2 and "--request-timeout-s: must be a positive number of seconds" in capsys.readouterr().err
    tb = "Traceback (most recent call last):\n  File x\nalae_ray.core.checkpoint.CheckpointError: checkpoint 'c' does not match"
    assert root_message(tb) == "checkpoint 'c' does not match"
