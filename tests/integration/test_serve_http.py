"""The Serve application over real HTTP on loopback: every endpoint, every bad input, batching, overload,
S3, mismatch.

One local Ray + Serve for the module, a tiny trained checkpoint. After every refused input the same
replica must still answer a real request.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from helpers import bad_uploads, gradient, png_bytes, start_private_ray, variants
from PIL import Image

pytestmark = pytest.mark.ray

RES = 32
LIMITS = {"max_upload_bytes": 200_000, "max_request_bytes": 1_000_000}  # small, so 413s are cheap to provoke


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, s3_bucket_factory, train_checkpoint):
    """A tiny trained checkpoint: local, a copy on S3, and a copy whose config does not match its tensors."""
    import pyarrow.fs as pafs

    from alae_ray.data.storage import resolve

    root = tmp_path_factory.mktemp("serve-ckpt")
    local = train_checkpoint(root / "tiny", kimg=0.3)
    s3 = f"{s3_bucket_factory('serve')}/runs/tiny/checkpoint"
    loc = resolve(s3)
    pafs.copy_files(str(local), loc.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.fs)
    bad = root / "mismatch"
    shutil.copytree(local, bad)
    conf = json.loads((bad / "config.json").read_text())
    conf["model"]["max_channels"] = 32  # narrower layers than the tensors hold
    (bad / "config.json").write_text(json.dumps(conf))
    return {"local": str(local), "s3": s3, "bad": str(bad)}


@pytest.fixture(scope="module")
def server(checkpoints, s3_server):
    """Base URL of the application (API and UI) on 127.0.0.1; the S3 environment reaches the replicas."""
    import ray
    from ray import serve

    from alae_ray.serve.app import ServeArgs
    from apps.gradio_app import build_app

    temp = tempfile.mkdtemp(prefix="ray-srv-", dir="/tmp")  # short: Ray's socket paths must fit
    start_private_ray(temp)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(checkpoint=checkpoints["local"], batch_wait_timeout_s=0.05, lpips=False,
                                  max_concurrent_refines=1, **LIMITS)), name="alae", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def faces(shared_data) -> list[bytes]:
    return [p.read_bytes() for p in sorted((shared_data / "faces128").glob("*.png"))[:4]]


def png_array(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"))


def assert_clean_error(r: requests.Response, status: int | tuple[int, ...]):
    """A 4xx (or 503) JSON error with a message and nothing from the server's insides."""
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert msg and "Traceback" not in r.text and "/tmp" not in r.text and "/work" not in r.text and ".py" not in r.text


def assert_alive(url: str):
    r = requests.post(f"{url}/api/generate", json={"seed": 0}, timeout=60)
    assert r.status_code == 200 and png_array(r.content).shape == (RES, RES, 3)


def encode(url: str, data: bytes, field: str = "image") -> np.ndarray:
    r = requests.post(f"{url}/api/encode", files={field: ("x.png", data)}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["w"], dtype=np.float32)


# --- endpoints ---------------------------------------------------------------------------------


def test_info_health_and_ui_mount(server):
    info = requests.get(f"{server}/api/info", timeout=30).json()
    assert info["resolution"] == RES and info["latent_size"] == 64 and info["style_layers"] == 8
    assert info["checkpoint"] == "tiny" and "/" not in info["checkpoint"]  # no server paths
    assert info["bands"]["coarse"]["layers"] == [0, 2] and info["bands"]["fine"]["resolutions"] == "32x32"
    assert requests.get(f"{server}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{server}/api/openapi.json", timeout=30).json()["paths"]["/api/mix"]
    page = requests.get(f"{server}/", timeout=30)  # redirected to the Gradio UI
    assert page.status_code == 200 and page.url.endswith("/ui/") and "gradio" in page.text.lower()
    assert_clean_error(requests.get(f"{server}/api/nothing", timeout=30), 404)


def test_reconstruct_encode_decode_agree(server, faces):
    r = requests.post(f"{server}/api/reconstruct", files={"image": ("face.png", faces[0], "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    w = np.asarray(body["w"], dtype=np.float32)
    rec = png_array(base64.b64decode(body["image_png_base64"]))
    assert w.shape == (64,) and np.isfinite(w).all() and rec.shape == (RES, RES, 3)
    assert body["batch_size"] >= 1 and r.headers["X-Batch-Size"] == str(body["batch_size"])
    # the PNG form gives the same image; encode gives the same w; decode(w) gives the same image
    r_png = requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("f.png", faces[0])}, timeout=60)
    assert r_png.headers["content-type"] == "image/png"
    assert np.abs(png_array(r_png.content).astype(int) - rec.astype(int)).max() <= 1
    assert np.allclose(encode(server, faces[0]), w, atol=1e-4)
    d = requests.post(f"{server}/api/decode", json={"w": body["w"]}, timeout=60)
    assert d.status_code == 200 and d.headers["content-type"] == "image/png"
    assert np.abs(png_array(d.content).astype(int) - rec.astype(int)).max() <= 1
    # per-style-input codes: 8 rows of 64, all equal, are the same as one row
    d8 = requests.post(f"{server}/api/decode", json={"w": [body["w"]] * 8}, timeout=60)
    assert np.array_equal(png_array(d8.content), png_array(d.content))
    # different faces, different codes
    assert not np.allclose(encode(server, faces[1]), w, atol=1e-3)


def test_raw_image_bodies_answer_as_multipart_does(server, faces):
    """The image as the whole body (no multipart to parse), its fields in the query string."""
    def multipart(path, data=None):
        return requests.post(f"{server}{path}", files={"image": ("f.png", faces[0])}, data=data, timeout=120)

    def raw(path, kind="image/png"):
        return requests.post(f"{server}{path}", data=faces[0], headers={"Content-Type": kind}, timeout=120)

    assert raw("/api/encode").json()["w"] == multipart("/api/encode").json()["w"]
    assert raw("/api/reconstruct?format=png", "application/octet-stream").content == \
        multipart("/api/reconstruct?format=png").content
    assert raw("/api/edit?direction=1&strength=2.5&layers=coarse").content == \
        multipart("/api/edit", {"direction": "1", "strength": "2.5", "layers": "coarse"}).content
    by_raw, by_form = raw("/api/refine?steps=5").json(), multipart("/api/refine", {"steps": "5"}).json()
    assert by_raw["steps"] == 5 and by_raw == by_form
    assert_clean_error(raw("/api/edit?strength=1"), 422)  # no direction
    assert_clean_error(raw("/api/refine?steps=5000"), 422)
    assert_clean_error(requests.post(f"{server}/api/encode", data=b"", headers={"Content-Type": "image/png"},
                                     timeout=60), 400)
    assert_clean_error(requests.post(f"{server}/api/encode", data=b"not an image", timeout=60,
                                     headers={"Content-Type": "image/png"}), 415)
    assert_alive(server)


def test_generate(server):
    a = requests.post(f"{server}/api/generate", json={"seed": 5, "psi": 0.7}, timeout=60)
    b = requests.post(f"{server}/api/generate", json={"seed": 5, "psi": 0.7}, timeout=60)
    c = requests.post(f"{server}/api/generate", json={"seed": 6}, timeout=60)
    t = requests.post(f"{server}/api/generate", json={"seed": 5, "psi": 0.0}, timeout=60)
    for r in (a, b, c, t):
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert a.content == b.content  # deterministic
    assert not np.array_equal(png_array(a.content), png_array(c.content))
    assert not np.array_equal(png_array(a.content), png_array(t.content))  # truncation changes the face


def test_style_mixing_single_grid_and_ranges(server, faces):
    one = requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[0])), ("destination", ("d.png", faces[1]))],
                        data={"layers": "coarse"}, timeout=60)
    assert one.status_code == 200 and png_array(one.content).shape == (RES, RES, 3)
    assert one.headers["X-Style-Layers"] == "0:2"
    # by index: the same range as the band name gives the same image
    idx = requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[0])), ("destination", ("d.png", faces[1]))],
                        data={"layers": "0:2"}, timeout=60)
    assert idx.content == one.content
    # all layers from the source: the source's reconstruction
    full = requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[0])), ("destination", ("d.png", faces[1]))],
                         data={"layers": "0:8"}, timeout=60)
    rec = requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("f.png", faces[0])}, timeout=60)
    assert np.abs(png_array(full.content).astype(int) - png_array(rec.content).astype(int)).max() <= 1
    # Figure 9 grid: 3 sources x 2 destinations, plus the header row and column
    files = [("source", (f"s{i}.png", faces[i])) for i in range(3)] + \
            [("destination", (f"d{i}.png", faces[3 - i])) for i in range(2)]
    for band in ("coarse", "middle", "fine"):
        g = requests.post(f"{server}/api/mix", files=files, data={"layers": band}, timeout=60)
        assert g.status_code == 200, g.text
        grid = png_array(g.content)
        assert grid.shape == (3 * RES, 4 * RES, 3)
        assert (grid[:RES, :RES] == 255).all()  # the empty corner


def test_interpolate(server, faces):
    r = requests.post(f"{server}/api/interpolate", files={"a": ("a.png", faces[0]), "b": ("b.png", faces[1])},
                      data={"steps": "5"}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Steps"] == "5"
    frames = png_array(r.content)
    assert frames.shape == (RES, 5 * RES, 3)
    rec = png_array(requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("f.png", faces[1])},
                                  timeout=60).content)
    assert np.abs(frames[:, -RES:].astype(int) - rec.astype(int)).max() <= 1  # the path ends at b


def test_edit_directions_are_orthonormal_and_move_the_image(server, faces):
    body = requests.get(f"{server}/api/directions", timeout=60).json()
    d = np.asarray(body["directions"])
    assert body["count"] == 10 and d.shape == (10, 64)
    assert np.allclose(d @ d.T, np.eye(10), atol=1e-5)  # orthonormal
    form = {"direction": "0", "strength": "0"}
    still = requests.post(f"{server}/api/edit", files={"image": ("f.png", faces[0])}, data=form, timeout=60)
    rec = requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("f.png", faces[0])}, timeout=60)
    assert still.status_code == 200 and still.headers["X-Direction"] == "0"
    assert np.abs(png_array(still.content).astype(int) - png_array(rec.content).astype(int)).max() <= 1
    moved = {}
    for k, layers in ((0, ""), (1, ""), (0, "coarse")):
        r = requests.post(f"{server}/api/edit", files={"image": ("f.png", faces[0])},
                          data={"direction": str(k), "strength": "8", "layers": layers}, timeout=60)
        assert r.status_code == 200, r.text
        moved[k, layers] = png_array(r.content).astype(int)
        assert np.abs(moved[k, layers] - png_array(rec.content).astype(int)).max() > 8  # the image changed
    assert not np.array_equal(moved[0, ""], moved[1, ""]) and not np.array_equal(moved[0, ""], moved[0, "coarse"])
    # the same edit of the code itself (JSON) gives the same image
    w = encode(server, faces[0]).tolist()
    by_code = requests.post(f"{server}/api/edit", json={"w": w, "direction": 0, "strength": 8}, timeout=60)
    assert by_code.status_code == 200
    assert np.abs(png_array(by_code.content).astype(int) - moved[0, ""]).max() <= 1


def test_refinement_lowers_the_pixel_error_on_real_faces(server, faces):
    for face in faces[:2]:
        r = requests.post(f"{server}/api/refine", files={"image": ("f.png", face)}, data={"steps": "40"}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["steps"] == 40 and body["mse_refined"] < body["mse_encoder"], body
        encoder = png_array(base64.b64decode(body["encoder_png_base64"]))
        rec = png_array(requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("f.png", face)},
                                      timeout=60).content)
        assert np.abs(encoder.astype(int) - rec.astype(int)).max() <= 1  # the left one is G(E(x))
        assert png_array(base64.b64decode(body["refined_png_base64"])).shape == (RES, RES, 3)
    zero = requests.post(f"{server}/api/refine?format=png", files={"image": ("f.png", faces[0])}, data={"steps": "0"},
                         timeout=60)
    both = png_array(zero.content)
    assert both.shape == (RES, 2 * RES, 3) and np.array_equal(both[:, :RES], both[:, RES:])  # no step: no change


def test_refinement_streams_its_progress_then_the_result(server, faces):
    """What the UI's progress bar reads: the model replica streams ("step", step, loss) events, then the
    result that /api/refine returns for the same image and steps."""
    from ray import serve

    from alae_ray.serve.inputs import decode_image

    handle = serve.get_deployment_handle("ModelServer", app_name="alae")
    events = list(handle.options(stream=True).refine.remote(decode_image(faces[0], RES), 30))
    kinds, steps = [e[0] for e in events], [e[1] for e in events[:-1]]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"step"} and steps[-1] == 30, kinds
    assert steps == sorted(set(steps)) and all(np.isfinite(e[2]) for e in events[:-1])
    _, encoder, refined, mse = events[-1]
    body = requests.post(f"{server}/api/refine", files={"image": ("f.png", faces[0])}, data={"steps": "30"},
                         timeout=300).json()
    assert [body["mse_encoder"], body["mse_refined"]] == [float(mse[0]), float(mse[1])]
    assert np.array_equal(png_array(base64.b64decode(body["refined_png_base64"])), refined)
    before = requests.get(f"{server}/api/stats", timeout=30).json()["refine"]
    stream = handle.options(stream=True).refine.remote(decode_image(faces[1], RES), 200)
    assert next(stream)[0] == "step"
    stream.cancel()  # the caller goes away: the optimisation stops at its next step
    deadline = time.monotonic() + 60
    while requests.get(f"{server}/api/stats", timeout=30).json()["refine"]["stopped"] == before["stopped"]:
        assert time.monotonic() < deadline, "a refinement nobody listens to kept running"
        time.sleep(0.1)
    assert requests.get(f"{server}/api/stats", timeout=30).json()["refine"]["finished"] == before["finished"]


@pytest.mark.parametrize("path,data", [
    ("/api/refine", {"steps": "201"}), ("/api/refine", {"steps": "-1"}), ("/api/refine", {"steps": "abc"}),
    ("/api/edit", {"direction": "10", "strength": "1"}), ("/api/edit", {"direction": "-1", "strength": "1"}),
    ("/api/edit", {"direction": "x", "strength": "1"}), ("/api/edit", {"direction": "0", "strength": "nan"}),
    ("/api/edit", {"direction": "0", "strength": "inf"}), ("/api/edit", {"direction": "0", "strength": "100"}),
    ("/api/edit", {"direction": "0"}), ("/api/edit", {"direction": "0", "strength": "1", "layers": "9:12"}),
])
def test_bad_edit_and_refine_values(server, faces, path, data):
    r = requests.post(f"{server}{path}", files={"image": ("f.png", faces[0])}, data=data, timeout=60)
    assert_clean_error(r, 422)
    assert_alive(server)


def test_bad_edit_codes(server):
    w = [0.1] * 64
    for body in ({"direction": 0, "strength": 1}, {"w": w[:3], "direction": 0, "strength": 1},
                 {"w": w, "direction": 0, "strength": True}, {"w": w, "direction": 1.5, "strength": 1}):
        assert_clean_error(requests.post(f"{server}/api/edit", json=body, timeout=60), 422)
    assert_clean_error(requests.post(f"{server}/api/edit", data={"direction": "0", "strength": "1"}, timeout=60), 400)
    assert_alive(server)


# --- accepted odd images ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cmyk_jpeg", "gray8", "gray16", "rgb16", "rgba", "rgba16", "gray_alpha", "palette",
                                  "non_square"])
def test_odd_images_are_converted(server, name):
    r = requests.post(f"{server}/api/reconstruct?format=png", files={"image": ("x", variants()[name])}, timeout=60)
    assert r.status_code == 200, r.text
    assert png_array(r.content).shape == (RES, RES, 3)


def test_non_square_policy_is_centre_crop(server):
    wide = gradient(96, 48)
    w_wide = encode(server, png_bytes(Image.fromarray(wide)))
    w_crop = encode(server, png_bytes(Image.fromarray(wide[:, 24:72])))  # its centred square
    assert np.allclose(w_wide, w_crop, atol=1e-4)


# --- refused inputs: a clear 4xx, and the replica keeps serving -------------------------------------


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_bad_uploads(server, name):
    data, status = bad_uploads()[name]
    for path in ("/api/reconstruct", "/api/encode"):
        assert_clean_error(requests.post(f"{server}{path}", files={"image": ("x.png", data)}, timeout=60), status)
    assert_clean_error(requests.post(f"{server}/api/mix", files=[("source", ("s.png", data)),
                                                                   ("destination", ("d.png", variants()["rgb_png"]))],
                                     timeout=60), status)
    assert_alive(server)


def test_missing_and_empty_bodies(server):
    assert_clean_error(requests.post(f"{server}/api/encode", timeout=30), 400)  # no body at all
    assert_clean_error(requests.post(f"{server}/api/reconstruct", data=b"\x89PNG\r\n", timeout=30), 400)  # not multipart
    assert_clean_error(requests.post(f"{server}/api/reconstruct", files={"other": ("x.png", b"1")}, timeout=30), 400)
    assert_clean_error(requests.post(f"{server}/api/reconstruct", data={"image": "text"}, timeout=30), 400)
    assert_clean_error(requests.post(f"{server}/api/reconstruct?format=gif", files={"image": ("x", variants()["rgb_png"])},
                                     timeout=30), 422)
    assert_clean_error(requests.post(f"{server}/api/decode", timeout=30), 400)
    assert_clean_error(requests.post(f"{server}/api/generate", data=b"", timeout=30), 400)
    assert_alive(server)


def test_upload_size_limits(server):
    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise))  # ~270 kB: over the per-file limit, under the body limit
    assert LIMITS["max_upload_bytes"] < len(big) < LIMITS["max_request_bytes"]
    r = requests.post(f"{server}/api/reconstruct", files={"image": ("big.png", big)}, timeout=60)
    assert_clean_error(r, 413)
    assert str(LIMITS["max_upload_bytes"]) in r.json()["error"]
    huge = b"\0" * (LIMITS["max_request_bytes"] + 1)
    assert_clean_error(requests.post(f"{server}/api/reconstruct", files={"image": ("huge.png", huge)}, timeout=60), 413)

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"\0" * 50_000

    assert_clean_error(requests.post(f"{server}/api/reconstruct", data=chunks(),
                                     headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=60), 413)
    assert_alive(server)


@pytest.mark.parametrize("layers", ["", "coarsest", "5:2", "0:99", "8", "-1", "1:2:3", "x:y"])
def test_bad_layer_ranges(server, faces, layers):
    r = requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[0])), ("destination", ("d.png", faces[1]))],
                      data={"layers": layers}, timeout=60)
    assert_clean_error(r, 422)
    assert_alive(server)


def test_bad_grid_sizes_and_steps(server, faces):
    nine = [("source", (f"s{i}.png", faces[0])) for i in range(9)] + [("destination", ("d.png", faces[1]))]
    assert_clean_error(requests.post(f"{server}/api/mix", files=nine, timeout=60), 422)
    assert_clean_error(requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[0]))], timeout=60), 400)
    for steps in ("1", "33", "abc", "2.5"):
        r = requests.post(f"{server}/api/interpolate", files={"a": ("a.png", faces[0]), "b": ("b.png", faces[1])},
                          data={"steps": steps}, timeout=60)
        assert_clean_error(r, 422)
    assert_alive(server)


@pytest.mark.parametrize("body,status", [
    ({"seed": -1}, 422), ({"seed": 1.5}, 422), ({"seed": "abc"}, 422), ({"seed": 2**64}, 422), ({"seed": True}, 422),
    ({"seed": None}, 422), ({"psi": 0.5}, 422), ([1, 2], 422), ({"seed": 1, "psi": 9}, 422),
    ({"seed": 1, "psi": "x"}, 422), ({"seed": 1, "psi": [0.5]}, 422), ('{"seed": 1, "psi": NaN}', 400),
    ('{"seed": 1, "psi": Infinity}', 400), ("{seed: 1}", 400),
])
def test_bad_seed_or_psi(server, body, status):
    data = body if isinstance(body, str) else json.dumps(body)
    assert_clean_error(requests.post(f"{server}/api/generate", data=data, timeout=30), status)
    assert_alive(server)


@pytest.mark.parametrize("body,status", [
    ({"w": [0.1] * 63}, 422), ({"w": [0.1] * 65}, 422), ({"w": ["a"] * 64}, 422), ({"w": [None] * 64}, 422),
    ({"w": [[0.1] * 64] * 3}, 422), ({"w": 5}, 422), ({"v": [0.1] * 64}, 422), ({"w": [1e9] * 64}, 422),
    ('{"w": [' + ",".join(["NaN"] * 64) + "]}", 400), ('{"w": [' + ",".join(["1e999"] * 64) + "]}", 422),
    ("not json", 400),
])
def test_bad_w(server, body, status):
    data = body if isinstance(body, str) else json.dumps(body)
    assert_clean_error(requests.post(f"{server}/api/decode", data=data, timeout=30), status)
    assert_alive(server)


# --- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_are_batched(server, faces):
    n = 16
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def client(i: int):
        barrier.wait()
        results[i] = requests.post(f"{server}/api/reconstruct", files={"image": ("f.png", faces[i % 4])}, timeout=120)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    sizes = [r.json()["batch_size"] for r in results]
    assert max(sizes) > 1, sizes
    stats = requests.get(f"{server}/api/stats", timeout=30).json()["reconstruct"]
    assert stats["max"] > 1 and stats["max"] <= 16
    # a face's code does not depend on which batch it landed in
    ref = encode(server, faces[0])
    for i in range(0, n, 4):
        assert np.allclose(np.asarray(results[i].json()["w"]), ref, atol=1e-4)


def test_different_requests_share_model_batches(server, faces):
    """decode ([S, L] and [L] codes), interpolation and mixing all go through the batched synthesize."""
    w = encode(server, faces[0]).tolist()
    calls = [lambda: requests.post(f"{server}/api/decode", json={"w": w}, timeout=120),
             lambda: requests.post(f"{server}/api/decode", json={"w": [w] * 8}, timeout=120),
             lambda: requests.post(f"{server}/api/interpolate", files={"a": ("a.png", faces[0]), "b": ("b.png", faces[1])},
                                   data={"steps": "3"}, timeout=120),
             lambda: requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[2])),
                                                              ("destination", ("d.png", faces[3]))], timeout=120)]
    barrier = threading.Barrier(16)
    results: list = [None] * 16

    def client(i: int):
        barrier.wait()
        results[i] = calls[i % 4]()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    assert results[0].content == results[4].content  # the same request, whatever batch it shared
    assert requests.get(f"{server}/api/stats", timeout=30).json()["synthesize"]["max"] > 1


def test_a_grid_larger_than_a_model_batch_goes_in_pieces(server, faces):
    """8 x 8 cells are 64 codes: four model batches of at most max_batch_images (16), in order."""
    files = [("source", (f"s{i}.png", faces[i % 4])) for i in range(8)] + \
            [("destination", (f"d{i}.png", faces[(i + 1) % 4])) for i in range(8)]
    r = requests.post(f"{server}/api/mix", files=files, data={"layers": "middle"}, timeout=120)
    assert r.status_code == 200, r.text
    grid = png_array(r.content)
    assert grid.shape == (9 * RES, 9 * RES, 3)
    one = requests.post(f"{server}/api/mix", files=[("source", ("s.png", faces[2])), ("destination", ("d.png", faces[3]))],
                        data={"layers": "middle"}, timeout=60)
    cell = grid[3 * RES:4 * RES, 7 * RES:8 * RES]  # destination 2 (faces[3]) with source 6's styles (faces[2])
    assert np.abs(cell.astype(int) - png_array(one.content).astype(int)).max() <= 1
    assert requests.get(f"{server}/api/stats", timeout=30).json()["synthesize"]["max_images"] <= 16


# --- overload: refinements behind their own bound, bounded queues, 503s with JSON -------------------


def refine_stats(url: str) -> dict:
    return requests.get(f"{url}/api/stats", timeout=30).json()["refine"]


def wait_until_no_refinement_runs(url: str) -> None:
    deadline = time.monotonic() + 60
    while refine_stats(url)["running"]:
        assert time.monotonic() < deadline, "a refinement kept its slot"
        time.sleep(0.1)


def assert_busy(r: requests.Response, cause: str):
    assert_clean_error(r, 503)
    assert cause in r.json()["error"] and "retry" in r.json()["error"] and int(r.headers["Retry-After"]) > 0


def test_refinements_beyond_their_bound_get_503_and_the_rest_keeps_serving(server, faces):
    """The replica runs one refinement at a time: while one holds that slot, a flood of refinements is
    refused with JSON 503s, generate still answers, and the held refinement goes on undisturbed."""
    from ray import serve

    from alae_ray.serve.inputs import decode_image

    wait_until_no_refinement_runs(server)
    before = refine_stats(server)
    handle = serve.get_deployment_handle("ModelServer", app_name="alae")
    held = handle.options(stream=True).refine.remote(decode_image(faces[0], RES), 1000)  # the most steps: seconds
    assert next(held)[0] == "step"  # it runs: the replica's one refinement slot is taken
    flood = 6
    with ThreadPoolExecutor(flood + 1) as pool:
        refines = [pool.submit(requests.post, f"{server}/api/refine", files={"image": ("f.png", faces[1])},
                               data={"steps": "50"}, timeout=60) for _ in range(flood)]
        generate = pool.submit(requests.post, f"{server}/api/generate", json={"seed": 3}, timeout=60)
        answers = [f.result() for f in refines]
        generated = generate.result()
    during = refine_stats(server)
    assert during["running"] == 1 and during["finished"] == before["finished"], \
        f"the held refinement ended during the flood, so the flood proves nothing: {before} -> {during}"
    for r in answers:
        assert_busy(r, "max_concurrent_refines")
    assert during["refused"] - before["refused"] == flood
    assert generated.status_code == 200 and png_array(generated.content).shape == (RES, RES, 3)
    held.cancel()
    wait_until_no_refinement_runs(server)
    assert requests.get(f"{server}/api/info", timeout=30).json()["resolution"] == RES
    r = requests.post(f"{server}/api/refine", files={"image": ("f.png", faces[1])}, data={"steps": "5"}, timeout=60)
    assert r.status_code == 200 and r.json()["steps"] == 5  # the slot is free again


def test_a_full_model_queue_answers_503_at_once_and_the_replica_recovers(server, checkpoints):
    """One batched call in the replica at a time, held by a 4 s batch wait, and one queued: of six
    generates at once the extra ones are refused with a JSON 503, the admitted ones answer."""
    from ray import serve

    from alae_ray.serve.app import ServeArgs, build_app

    try:
        serve.run(build_app(ServeArgs(checkpoint=checkpoints["local"], ui=False, lpips=False, max_ongoing_requests=1,
                                      max_queued_requests=1, batch_wait_timeout_s=4)), name="queue", route_prefix="/queue")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda seed: requests.post(f"{server}/queue/api/generate", json={"seed": seed},
                                                               timeout=60), range(6)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) == {200, 503}, statuses
        for r in answers:
            if r.status_code == 503:
                assert_busy(r, "max_queued_requests")
        assert requests.get(f"{server}/queue/api/info", timeout=30).status_code == 200
        stats = requests.get(f"{server}/queue/api/stats", timeout=30).json()["generate"]  # the model replica answers
        assert stats["batches"] >= 1 and stats["max_images"] <= 2
    finally:
        serve.delete("queue")


# --- checkpoints on S3, and a checkpoint that does not match its config ------------------------


def test_checkpoint_from_s3(server, checkpoints, faces):
    from ray import serve

    from alae_ray.serve.app import ServeArgs, build_app

    try:
        serve.run(build_app(ServeArgs(checkpoint=checkpoints["s3"], ui=False)), name="s3", route_prefix="/s3")
        info = requests.get(f"{server}/s3/api/info", timeout=30).json()
        assert info["checkpoint"] == checkpoints["s3"] and info["resolution"] == RES
        # the same tensors as the local copy: the same code for the same face
        r = requests.post(f"{server}/s3/api/encode", files={"image": ("f.png", faces[2])}, timeout=60)
        assert r.status_code == 200
        assert np.allclose(np.asarray(r.json()["w"]), encode(server, faces[2]), atol=1e-4)
    finally:
        serve.delete("s3")


def test_an_imported_authors_checkpoint_is_served_as_the_python_api_computes_it(server, shared_data, faces, tmp_path):
    from ray import serve

    import alae_ray
    from alae_ray.cli import main
    from alae_ray.serve.app import ServeArgs, build_app
    from alae_ray.serve.inputs import decode_image

    ref = shared_data / "authors-reference"
    ckpt = tmp_path / "fused_style"  # the authors' own checkpointer wrote it: 128x128, fused blocks
    assert main(["import-authors", str(ref / "fused_style.pth"), "--out", str(ckpt),
                 "--config", str(ref / "fused_style.yaml")]) == 0
    model = alae_ray.load(ckpt, device="cpu")
    try:
        serve.run(build_app(ServeArgs(checkpoint=str(ckpt), ui=False)), name="authors", route_prefix="/authors")
        info = requests.get(f"{server}/authors/api/info", timeout=30).json()
        assert info["resolution"] == 128 and info["latent_size"] == 8 and info["checkpoint"] == "fused_style"
        for face in faces[:2]:
            r = requests.post(f"{server}/authors/api/reconstruct?format=png", files={"image": ("f.png", face)},
                              timeout=120)
            assert r.status_code == 200, r.text
            expected = model.to_uint8(model.reconstruct(decode_image(face, 128)[None]))[0]
            assert np.abs(png_array(r.content).astype(int) - expected.astype(int)).max() <= 1
    finally:
        serve.delete("authors")


def test_mismatched_checkpoint_fails_at_startup_naming_it(server, checkpoints):
    from ray import serve

    from alae_ray.serve.app import ServeArgs, build_app
    from alae_ray.serve.cli import startup_error

    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as err:  # Serve gives up on the replica's constructor
            serve.run(build_app(ServeArgs(checkpoint=checkpoints["bad"], ui=False)), name="bad", route_prefix="/bad")
        message = startup_error("bad", err.value)
    finally:
        serve.delete("bad")
    assert checkpoints["bad"] in message and "does not match its config" in message, message
    assert time.monotonic() - start < 120
    assert_alive(server)  # the healthy application is untouched
