"""The Gradio UI of an ALAE: reconstruction (plain and refined), edits along learned directions, style
mixing (Figure 9 grid), generation, interpolation.

``build_app(args)`` is the serving application with this UI at /ui (deploy/serve.yaml's import path
and ``alae-ray serve``'s); it is composed on top of ``alae_ray.serve``, which never imports it.
``build_ui(service, examples)`` returns a ``gr.Blocks`` that calls the same ``Service`` as the HTTP
API, so uploads go through the same validation and the model through the same batched deployment.
Example images are made when the UI starts (nothing from a dataset is shipped): held-out renders for
a model of the procedural shapes, the model's own generations otherwise; the words follow what the
checkpoint was trained on (faces, bedrooms, digits, shapes).
Uploads are decoded off the event loop; Gradio's copies of uploads and outputs are deleted hourly.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from alae_ray.serve import app as serve_app
from alae_ray.serve.app import ServeArgs
from alae_ray.serve.inputs import InputError, decode_image, strip, style_grid
from alae_ray.serve.service import Overloaded, Service
from alae_ray.serve.styles import BANDS

EXAMPLE_SEEDS = tuple(range(6))
CACHE_MAX_AGE_S = 3600  # Gradio's copies of uploads and outputs: checked this often, deleted once this old
# What a preset was trained on, by its name's start: (plural noun, what to upload).
SUBJECTS = (
    ("ffhq", "faces", "a photo of one face, centred and upright, like FFHQ's aligned portraits"),
    ("celeba", "faces", "a photo of one face, centred and upright, like CelebA's aligned portraits"),
    ("bedroom", "bedrooms", "a photo of a bedroom, like LSUN Bedroom's"),
    ("mnist", "digits", "a handwritten digit, light on a dark background, like MNIST's"),
    ("shapes", "shapes", "a coloured shape on a plain background, like the procedural training data"),
    ("tiny", "shapes", "a coloured shape on a plain background, like the procedural training data"),
)


def subject(preset: str) -> tuple[str, str]:
    """(what the model makes, what to upload) for a checkpoint's preset name."""
    for prefix, noun, upload in SUBJECTS:
        if preset.lower().startswith(prefix):
            return noun, upload
    return "images", "an image like the ones the model was trained on"


@dataclass(frozen=True)
class Examples:
    directory: str
    paths: list[str]
    label: str  # what they are


def held_out_shapes(resolution: int, n: int) -> np.ndarray:
    """uint8 [n, R, R, 3]: the first ``n`` of the shapes judge's held-out items (no dataset holds them)."""
    from alae_ray.data.synthetic import generate
    from alae_ray.judges.shapes import HELD_OUT_START

    images, _ = generate(np.arange(HELD_OUT_START, HELD_OUT_START + n), resolution, 0)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


async def example_images(service: Service, seeds: tuple[int, ...] = EXAMPLE_SEEDS) -> Examples:
    """PNGs in a temp dir: for a model of the procedural shapes, held-out renders (inputs it has never
    seen, so its reconstructions show what it learnt); for any other, images it generates from fixed
    seeds at the checkpoint's truncation."""
    directory = tempfile.mkdtemp(prefix="alae-ui-examples-")
    noun, _ = subject(service.info["preset"])
    if noun == "shapes":
        images, label = held_out_shapes(service.resolution, len(seeds)), "Held-out shapes (never in a training set)"
    else:
        images, label = np.stack([(await service.generate(seed)).images[0] for seed in seeds]), f"Generated {noun}"
    paths = []
    for i, image in enumerate(images):
        path = str(Path(directory) / f"example{i}.png")
        Image.fromarray(image, "RGB").save(path)
        paths.append(path)
    return Examples(directory, paths, label)


async def _load(service: Service, path: str | None, name: str) -> np.ndarray:
    """An uploaded file at the model resolution, read and decoded off the event loop."""
    if not path:
        raise InputError(f"Upload a {name} image first.")
    limits = service.limits
    return await asyncio.to_thread(lambda: decode_image(Path(path).read_bytes(), service.resolution, limits, name))


def _shown(fn):
    """Refusals (bad input, a busy model) as Gradio's error message, not a traceback."""
    @functools.wraps(fn)  # keeps the signature: Gradio finds ``progress=gr.Progress()`` through it
    async def run(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except (InputError, Overloaded) as exc:
            raise gr.Error(str(exc)) from None
    return run


def enlarge(image: np.ndarray, resolution: int, target: int = 256) -> np.ndarray:
    """Display only: nearest-neighbour upscaling so that small models' images are visible (API: exact size)."""
    k = max(1, target // resolution)
    return image if k == 1 else image.repeat(k, axis=0).repeat(k, axis=1)


def _paths(files) -> list[str]:
    if not files:
        return []
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files if isinstance(files, list) else [files])]


def build_ui(service: Service, examples: Examples) -> gr.Blocks:
    info = service.info
    res = service.resolution
    bands = ", ".join(f"**{k}** = style inputs {v['layers'][0]}-{v['layers'][1] - 1} ({v['resolutions']})"
                      for k, v in info["bands"].items() if v["layers"][1] > v["layers"][0])

    @_shown
    async def reconstruct(path):
        r = await service.reconstruct(await _load(service, path, "input"))
        return enlarge(r.images[0], res)

    @_shown
    async def mix(src_files, dst_files, layers):
        srcs = [await _load(service, p, "source") for p in _paths(src_files)]
        dsts = [await _load(service, p, "destination") for p in _paths(dst_files)]
        if not srcs or not dsts:
            raise InputError("Upload at least one source and one destination image.")
        r, _ = await service.mix(srcs, dsts, layers)
        cells = r.images.reshape(len(dsts), len(srcs), *r.images.shape[1:])
        return enlarge(style_grid(np.stack(srcs), np.stack(dsts), cells), res)

    @_shown
    async def generate(seed, psi):
        try:
            seed = int(seed) if seed is not None else 0
        except (TypeError, ValueError, OverflowError):
            raise InputError("The seed must be a non-negative integer.") from None
        r = await service.generate(seed, psi)
        return enlarge(r.images[0], res)

    @_shown
    async def interpolate(a, b, steps):
        r = await service.interpolate(await _load(service, a, "first"), await _load(service, b, "second"), int(steps))
        return enlarge(strip(r.images), res, 128)

    @_shown
    async def edit(path, direction, strength, layers):
        r = await service.edit(int(direction), strength, layers, image=await _load(service, path, "input"))
        return enlarge(r.images[0], res)

    @_shown
    async def refine(path, steps, progress=gr.Progress()):
        def report(step: int, total: int, loss: float) -> None:
            progress((step, total), desc=f"Optimising w: loss {loss:.4f}", unit="steps")

        rec, refined, mse = await service.refine(await _load(service, path, "input"), int(steps), report)
        return (enlarge(rec, res), enlarge(refined, res),
                f"Pixel error (mean squared, [-1, 1] units): encoder {mse[0]:.4f}, refined {mse[1]:.4f}")

    out_size = max(256, res)
    noun, upload = subject(info["preset"])
    shown = examples.label
    with gr.Blocks(title=f"ALAE: {noun}", delete_cache=(CACHE_MAX_AGE_S, CACHE_MAX_AGE_S)) as demo:
        gr.Markdown(f"# Adversarial Latent Autoencoder: {noun}\n"
                    f"Checkpoint `{info['checkpoint']}` (preset {info['preset']}): {res}x{res} {noun}, "
                    f"latent size {info['latent_size']}, {info['style_layers']} style inputs. "
                    f"Upload {upload}; it is centre-cropped to a square and resized to {res}x{res}. Small outputs "
                    f"are shown enlarged (the HTTP API under /api returns them at {res}x{res}). "
                    f"Examples: {examples.label[0].lower() + examples.label[1:]}.")
        with gr.Tabs():
            with gr.Tab("Reconstruction", id="reconstruction"):
                with gr.Row():
                    rec_in = gr.Image(type="filepath", label="Input", sources=["upload", "clipboard"],
                                      elem_id="rec-input", height=out_size)
                    rec_out = gr.Image(label="Reconstruction G(E(x))", format="png", interactive=False,
                                       elem_id="rec-output", height=out_size)
                rec_btn = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
                gr.Examples([[p] for p in examples.paths], inputs=[rec_in], label=shown, elem_id="rec-examples")
                rec_btn.click(reconstruct, rec_in, rec_out, api_name="reconstruct")

            with gr.Tab("Refined reconstruction", id="refine"):
                gr.Markdown("Starts from the encoder's code w = E(x) and optimises it against the input for the "
                            f"chosen number of steps ({info.get('refine_loss', 'pixel')} loss): sharper than "
                            "G(E(x)), at the cost of time.")
                with gr.Row():
                    ref_in = gr.Image(type="filepath", label="Input", sources=["upload", "clipboard"],
                                      elem_id="ref-input", height=out_size)
                    ref_rec = gr.Image(label="Encoder: G(E(x))", format="png", interactive=False,
                                       elem_id="ref-encoder", height=out_size)
                    ref_out = gr.Image(label="Refined", format="png", interactive=False, elem_id="ref-output",
                                       height=out_size)
                ref_steps = gr.Slider(0, service.limits.max_refine_steps, value=min(50, service.limits.max_refine_steps),
                                      step=1, label="Optimisation steps", elem_id="ref-steps")
                ref_btn = gr.Button("Refine", variant="primary", elem_id="ref-run")
                ref_err = gr.Markdown(elem_id="ref-errors")
                gr.Examples([[examples.paths[0], 50]], inputs=[ref_in, ref_steps], label=shown)
                ref_btn.click(refine, [ref_in, ref_steps], [ref_rec, ref_out, ref_err], api_name="refine")

            with gr.Tab("Edit", id="edit"):
                gr.Markdown("Moves the image's code along one of the model's strongest directions in W, found "
                            "without labels from G's style weights (SeFa). Direction 0 is the strongest. "
                            f"Bands for this model: {bands}.")
                with gr.Row():
                    edit_in = gr.Image(type="filepath", label="Input", sources=["upload", "clipboard"],
                                       elem_id="edit-input", height=out_size)
                    edit_out = gr.Image(label="Edited", format="png", interactive=False, elem_id="edit-output",
                                        height=out_size)
                with gr.Row():
                    edit_dir = gr.Slider(0, service.limits.max_directions - 1, value=0, step=1, label="Direction",
                                         elem_id="edit-direction")
                    edit_strength = gr.Slider(-10.0, 10.0, value=3.0, step=0.5, label="Strength",
                                              elem_id="edit-strength")
                    edit_layers = gr.Dropdown(["all", *BANDS], value="all", allow_custom_value=True,
                                              label="Style inputs moved", elem_id="edit-layers")
                edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-run")
                gr.Examples([[examples.paths[0], 0, 3.0, "all"]], inputs=[edit_in, edit_dir, edit_strength, edit_layers],
                            label=shown)
                edit_btn.click(edit, [edit_in, edit_dir, edit_strength, edit_layers], edit_out, api_name="edit")

            with gr.Tab("Style mixing", id="mixing"):
                gr.Markdown("Each cell is a destination (left column) rendered with the chosen styles of a "
                            f"source (top row), as in the paper's Figure 9. Bands for this model: {bands}. "
                            "A custom range is `start:stop` over style inputs.")
                with gr.Row():
                    mix_src = gr.File(file_count="multiple", file_types=["image"], label="Sources (top row)",
                                      elem_id="mix-sources")
                    mix_dst = gr.File(file_count="multiple", file_types=["image"], label="Destinations (left column)",
                                      elem_id="mix-destinations")
                mix_layers = gr.Dropdown(list(BANDS), value="coarse", allow_custom_value=True,
                                         label="Styles taken from the source", elem_id="mix-layers")
                mix_btn = gr.Button("Mix styles", variant="primary", elem_id="mix-run")
                mix_out = gr.Image(label="Style mixing grid", format="png", interactive=False, elem_id="mix-output")
                gr.Examples([[examples.paths[:3], examples.paths[3:6], "coarse"]], inputs=[mix_src, mix_dst, mix_layers],
                            label=shown)
                mix_btn.click(mix, [mix_src, mix_dst, mix_layers], mix_out, api_name="mix")

            with gr.Tab("Generation", id="generation"):
                with gr.Row():
                    gen_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="gen-seed")
                    gen_psi = gr.Slider(-1.0, 2.0, value=service.default_psi, step=0.05, label="Truncation psi",
                                        elem_id="gen-psi")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-run")
                gen_out = gr.Image(label="G(F(z))", format="png", interactive=False, elem_id="gen-output",
                                   height=out_size)
                gen_btn.click(generate, [gen_seed, gen_psi], gen_out, api_name="generate")

            with gr.Tab("Interpolation", id="interpolation"):
                with gr.Row():
                    int_a = gr.Image(type="filepath", label="From", sources=["upload", "clipboard"], elem_id="int-a")
                    int_b = gr.Image(type="filepath", label="To", sources=["upload", "clipboard"], elem_id="int-b")
                int_steps = gr.Slider(2, service.limits.max_steps, value=8, step=1, label="Steps", elem_id="int-steps")
                int_btn = gr.Button("Interpolate in W", variant="primary", elem_id="int-run")
                int_out = gr.Image(label="Interpolation", format="png", interactive=False, elem_id="int-output")
                gr.Examples([[examples.paths[0], examples.paths[1], 8]], inputs=[int_a, int_b, int_steps],
                            label=shown)
                int_btn.click(interpolate, [int_a, int_b, int_steps], int_out, api_name="interpolate")
    return demo


async def mount_ui(app, service: Service, path: str):
    """This UI mounted at ``path`` on the gateway's ASGI ``app`` (``alae_ray.serve.app.MountUI``)."""
    examples = await example_images(service)
    # root_path: without it the files an example puts into an input are linked without /ui (a 404:
    # the input showed a broken image while the model got the file)
    return gr.mount_gradio_app(app, build_ui(service, examples), path=path, root_path=path,
                               max_file_size=service.limits.max_upload_bytes, allowed_paths=[examples.directory])


def build_app(args: ServeArgs):
    """The demo: the serving application (``alae_ray.serve.app.build_app``, which also takes a plain
    dict) with this UI at /ui, unless ``ui`` is false. ``serve run apps.gradio_app:build_app
    checkpoint=...`` or deploy/serve.yaml."""
    return serve_app.build_app(args, mount_ui)
