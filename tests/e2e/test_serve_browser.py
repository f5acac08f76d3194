"""A real browser on the Gradio UI served by Ray Serve: upload a face, reconstruct it, mix styles.

Headless Debian Chromium driven by Playwright (no browser download: ``executable_path``). The
screenshot is saved under the test's tmp_path (its path is printed) and, when the repository has an
``artifacts/screenshots/`` folder, copied there.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from helpers import start_private_ray

pytestmark = pytest.mark.ray

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, train_checkpoint):
    import ray
    from ray import serve

    from alae_ray.serve.app import ServeArgs
    from apps.gradio_app import build_app

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    ckpt = train_checkpoint(tmp_path_factory.mktemp("ui-ckpt") / "tiny", kimg=0.2, seed=4, data_seed=1)

    temp = tempfile.mkdtemp(prefix="ray-ui-", dir="/tmp")
    start_private_ray(temp)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(checkpoint=str(ckpt), lpips=False)), name="alae", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _output_image(page, elem_id: str, timeout_ms: int = 60_000):
    """Wait until the output component shows an image, and return its natural size."""
    img = page.locator(f"#{elem_id} img")
    img.first.wait_for(state="visible", timeout=timeout_ms)
    page.wait_for_function(
        "id => { const i = document.querySelector(`#${id} img`); return i && i.complete && i.naturalWidth > 0; }",
        arg=elem_id, timeout=timeout_ms)
    return img.first.evaluate("i => [i.naturalWidth, i.naturalHeight]")


@contextlib.contextmanager
def ui_page(url: str):
    """(a page of headless Chromium on the UI at ``url``, the page errors seen), closed after."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/", wait_until="networkidle", timeout=60_000)
        yield page, errors
        browser.close()


def test_browser_reconstruct_and_mix(ui_server, shared_data, tmp_path):
    faces = sorted((shared_data / "faces128").glob("*.png"))
    with ui_page(ui_server) as (page, errors):
        assert page.url.endswith("/ui/")
        page.get_by_text("Adversarial Latent Autoencoder: shapes").first.wait_for(timeout=30_000)  # tiny's data

        # Reconstruction: upload a real face, run, wait for the output image.
        page.locator("#rec-input input[type=file]").set_input_files(str(faces[0]))
        page.locator("#rec-input img").first.wait_for(state="visible", timeout=30_000)
        page.locator("#rec-run").click()
        w, h = _output_image(page, "rec-output")
        assert w == h == 256  # the model's 32x32, enlarged 8x for display
        page.screenshot(path=str(tmp_path / "reconstruction.png"), full_page=True)

        # Style mixing: two sources x one destination, middle band; the Figure 9 grid appears.
        page.get_by_role("tab", name="Style mixing").click()
        page.locator("#mix-sources input[type=file]").set_input_files([str(faces[1]), str(faces[2])])
        page.locator("#mix-destinations input[type=file]").set_input_files([str(faces[3])])
        # uploaded: one row per file in each File component
        page.wait_for_function("() => document.querySelectorAll('#mix-sources tr.file').length === 2 && "
                               "document.querySelectorAll('#mix-destinations tr.file').length === 1", timeout=30_000)
        page.locator("#mix-run").click()
        w, h = _output_image(page, "mix-output")
        assert (w, h) == (3 * 256, 2 * 256)  # corner + 2 sources across, header + 1 destination down
        shot = tmp_path / "style_mixing.png"
        page.screenshot(path=str(shot), full_page=True)

        # Generation: a seed gives a face.
        page.get_by_role("tab", name="Generation").click()
        page.locator("#gen-run").click()
        assert _output_image(page, "gen-output") == [256, 256]
    assert not errors, errors
    print(f"\nscreenshots: {tmp_path / 'reconstruction.png'} {shot}")
    artifacts = REPO / "artifacts" / "screenshots"
    if artifacts.is_dir():
        for p in (tmp_path / "reconstruction.png", shot):
            shutil.copy(p, artifacts / f"serve_{p.name}")


def test_every_ui_function_through_gradio_client(ui_server, shared_data, tmp_path):
    """Gradio's own Python client calls each UI function by its API name, through Serve."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    faces = [handle_file(str(p)) for p in sorted((shared_data / "faces128").glob("*.png"))[:4]]
    client = Client(f"{ui_server}/ui/", verbose=False, download_files=str(tmp_path))

    def image(path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB")).astype(int)

    rec = image(client.predict(faces[0], api_name="/reconstruct"))
    assert rec.shape == (256, 256, 3)  # 32x32, enlarged for display
    encoder, refined, errors = client.predict(faces[0], 20, api_name="/refine")
    assert np.abs(image(encoder) - rec).max() <= 1 and image(refined).shape == (256, 256, 3)
    assert "encoder" in errors and "refined" in errors
    job = client.submit(faces[0], 200, api_name="/refine")  # its progress bar: gr.Progress's updates
    job.result(timeout=300)
    updates = [job.communicator.updates.get_nowait() for _ in range(job.communicator.updates.qsize())]
    progress = [p for u in updates for p in (getattr(u, "progress_data", None) or [])]
    assert progress and {(p.length, p.unit) for p in progress} == {(200, "steps")}, updates
    assert [p.index for p in progress] == sorted(p.index for p in progress) and 0 < progress[-1].index <= 200
    unmoved = image(client.predict(faces[0], 0, 0.0, "all", api_name="/edit"))
    moved = image(client.predict(faces[0], 0, 8.0, "all", api_name="/edit"))
    assert np.abs(unmoved - rec).max() <= 1 and np.abs(moved - rec).max() > 8
    grid = image(client.predict([faces[1], faces[2]], [faces[3]], "middle", api_name="/mix"))
    assert grid.shape == (2 * 256, 3 * 256, 3)
    assert image(client.predict(3, 0.7, api_name="/generate")).shape == (256, 256, 3)
    assert image(client.predict(faces[0], faces[1], 4, api_name="/interpolate")).shape == (128, 4 * 128, 3)


def _shown_pixels(page, selector: str):
    """The pixels of the image the browser shows at ``selector`` (fetched as the page fetched it)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    data = page.evaluate(
        """async sel => { const i = document.querySelector(sel);
                          const b = new Uint8Array(await (await fetch(i.src)).arrayBuffer());
                          let s = ''; for (const c of b) s += String.fromCharCode(c); return btoa(s); }""", selector)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_a_held_out_example_is_reconstructed_as_the_api_does_and_judged(ui_server, tmp_path):
    """The shapes model's first example is the judge's first held-out item; the browser shows the
    model's reconstruction of it (the HTTP API's, enlarged), and the judge reads it."""
    import io

    import numpy as np
    import requests
    from PIL import Image

    from alae_ray.data.synthetic import generate
    from alae_ray.judges import shapes

    items, truth = generate(np.arange(shapes.HELD_OUT_START, shapes.HELD_OUT_START + 1), 32, 0)
    with ui_page(ui_server) as (page, errors):
        page.get_by_text("Held-out shapes (never in a training set)").first.wait_for(timeout=30_000)
        page.locator("#rec-examples").get_by_role("button").first.click()
        _output_image(page, "rec-input", timeout_ms=30_000)  # loaded, not only placed (a 404 never loads)
        offered = _shown_pixels(page, "#rec-input img")
        page.locator("#rec-run").click()
        assert _output_image(page, "rec-output") == [256, 256]
        shown = _shown_pixels(page, "#rec-output img")[::8, ::8]  # the nearest-neighbour 8x display undone
        page.screenshot(path=str(tmp_path / "held_out_example.png"), full_page=True)
    assert not errors, errors
    assert np.array_equal(offered, items[0].transpose(1, 2, 0))  # the example is the held-out item itself
    png = io.BytesIO()
    Image.fromarray(offered).save(png, format="PNG")
    api = requests.post(f"{ui_server}/api/reconstruct?format=png", files={"image": ("s.png", png.getvalue())},
                        timeout=60)
    assert api.status_code == 200, api.text
    assert np.array_equal(shown, np.asarray(Image.open(io.BytesIO(api.content)).convert("RGB")))
    # the judge reads the offered input within half a pixel of the truth, and reads what the browser
    # shows (printed: this test's model has learnt nothing to judge)
    got, floor = shapes.measure(shown.transpose(2, 0, 1)[None]), shapes.measure(items)
    position = float(np.hypot(got.x - truth["pos_x"], got.y - truth["pos_y"])[0] * 32) if got.found[0] else None
    assert abs(floor.x[0] - truth["pos_x"][0]) * 32 < 0.5 and abs(floor.y[0] - truth["pos_y"][0]) * 32 < 0.5
    print(f"\nheld-out item 0 as shown in the browser: shape found {bool(got.found[0])}, position error "
          f"{position} px (this test's model trained 0.2 kimg on noise); screenshot {tmp_path / 'held_out_example.png'}")
