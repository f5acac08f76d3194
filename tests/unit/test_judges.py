"""The shapes judge against known answers: the inputs score as the inputs do, a constant scores as the
blind guess, and known distortions (a shift, a hue rotation, a turn, a resize) give their known errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alae_ray.judges.shapes import ShapeClassifier, judge, measure

R = 32


@pytest.fixture(scope="module")
def classifier():
    return ShapeClassifier.fit(R)


def test_the_inputs_themselves_are_read_back_to_a_fraction_of_a_pixel(classifier):
    j = judge(lambda x: x, R, classifier=classifier)
    s = {f.factor: f for f in j.scores}
    assert s["position"].reconstructions == s["position"].inputs < 0.1  # px
    assert s["hue"].inputs < 0.5 and s["rotation"].inputs < 1.0  # degrees
    assert s["scale"].inputs < 0.25  # px of half-size (the outline's area against anti-aliased pixels)
    assert s["shape"].inputs == 100.0
    assert j.found == 1.0
    for f in ("position", "hue", "scale", "rotation"):  # and all far better than guessing
        assert s[f].inputs < s[f].blind / 5, f


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_constant_image_scores_as_the_blind_guess(classifier, value):
    j = judge(lambda x: np.full_like(x, value), R, classifier=classifier)
    for s in j.scores:
        assert s.reconstructions == pytest.approx(s.blind), s
    assert j.found == 0.0
    assert j.score("hue").blind == 90.0 and j.score("shape").blind == 25.0


def test_known_distortions_give_their_known_errors(classifier):
    shifted = judge(lambda x: np.roll(x, (2, -1), axis=(2, 3)), R, classifier=classifier)
    assert shifted.score("position").reconstructions == pytest.approx(np.hypot(2, 1), abs=0.1)
    # the few shapes that reach the border (a half-size up to 0.35 of the side, 0.3 from it) wrap round
    assert shifted.score("hue").reconstructions < 0.5 and shifted.score("shape").reconstructions >= 95.0
    rotated_hue = judge(lambda x: x[:, [2, 0, 1]], R, classifier=classifier)  # RGB -> BRG: hue + 120°
    assert rotated_hue.score("hue").reconstructions == pytest.approx(120.0, abs=0.5)
    assert rotated_hue.score("position").reconstructions < 0.1
    # a quarter turn about the image centre: each shape's angle moves by 90° (squares and ellipses: 0
    # within their period of 90° and 180°; triangles 30° off in 120°; stars 18° off in 72°)
    turned = judge(lambda x: np.rot90(x, 1, axes=(2, 3)).copy(), R, classifier=classifier)
    assert turned.score("shape").reconstructions == 100.0
    assert turned.score("rotation").reconstructions > 10 * judge(lambda x: x, R, classifier=classifier).score("rotation").inputs


def test_a_half_size_reconstruction_is_scored_by_its_scale(classifier):
    import torch

    def halved(x):  # the same image at half size, centred: every half-size is halved
        small = torch.nn.functional.avg_pool2d(torch.from_numpy(x).double(), 2).round().byte().numpy()
        out = np.zeros_like(x)
        out[:, :, R // 4:R // 4 + R // 2, R // 4:R // 4 + R // 2] = small
        return out

    from alae_ray.data.synthetic import generate
    from alae_ray.judges.shapes import HELD_OUT_START

    truth = generate(np.arange(HELD_OUT_START, HELD_OUT_START + 256), R)[1]
    j = judge(halved, R, classifier=classifier)
    assert j.score("scale").reconstructions == pytest.approx(float(np.mean(truth["scale"])) * R / 2, rel=0.1)


def test_images_it_cannot_judge_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"the shapes judge reads uint8 RGB images \[N, 3, R, R\], got uint8 \(2, 1, 8, 8\)"):
        measure(np.zeros((2, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"reconstructions have shape \(4, 3, 16, 16\), the inputs \(4, 3, 8, 8\)"):
        judge(lambda x: np.zeros((len(x), 3, 16, 16), np.uint8), 8, n=4)


def test_a_checkpoint_is_judged_from_the_api_and_from_alae_ray_eval(tmp_path, train_checkpoint, capsys):
    import json

    import alae_ray
    from alae_ray.cli import main

    ckpt = train_checkpoint(tmp_path / "ckpt")  # the tiny preset, briefly, on noise: far from the shapes
    model = alae_ray.load(ckpt, device="cpu")
    j = model.judge_shapes(n=64)
    assert j.resolution == model.resolution == 32 and j.items == 64
    assert [s.factor for s in j.scores] == ["position", "hue", "scale", "rotation", "shape"]
    assert j.score("position").inputs < 0.1 < j.score("position").blind
    assert main(["eval", "--checkpoint", str(ckpt), "--metric", "shapes", "--num-samples", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["metric"]: r for r in out["results"]}
    assert set(rows) == {f"shapes/{f}" for f in ("position", "hue", "scale", "rotation", "shape")}
    # eval judges at the level the run reached (here the first, 4x4), as its other metrics do
    at = alae_ray.load(ckpt, device="cpu", level=out["level"]).judge_shapes(n=64)
    assert out["resolution"] == at.resolution == 4
    assert rows["shapes/position"]["value"] == pytest.approx(at.score("position").reconstructions)
    assert rows["shapes/hue"]["details"]["blind"] == 90.0 and rows["shapes/shape"]["details"]["unit"] == "% right"


def test_a_model_the_judge_does_not_fit_is_refused_in_one_line(tmp_path, train_checkpoint):
    import alae_ray

    mlp = alae_ray.load(train_checkpoint(tmp_path / "mlp", preset="mnist"), device="cpu")
    with pytest.raises(ValueError, match=r"the shapes judge needs a StyleALAE on RGB images, not an MLP ALAE"):
        mlp.judge_shapes()


def test_the_ae_l2_baseline_trains_the_presets_own_networks_on_its_schedule(tmp_path, capsys):
    """AE(ℓ2) with tiny's E and G through its first levels: the loss falls, its checkpoint loads as any
    other and is judged; the same seed gives the same networks."""
    import alae_ray
    from alae_ray.core.config import load_config
    from alae_ray.data import PrepareOptions, prepare
    from alae_ray.data.sources import shapes_source
    from alae_ray.eval.style_ae import main, train_ae

    data = str(tmp_path / "shapes32")
    prepare(shapes_source(256, 32, seed=0), data, PrepareOptions(progress=False, test_count=16))
    fast = ["schedule.stable_kimg=0.5", "schedule.fade_kimg=0.5", "schedule.final_kimg=0"]
    cfg = load_config("tiny", fast)
    phases, rows = train_ae(cfg, data, max_kimg=2.0)
    levels = [r["level"] for r in rows]  # a row per 1,000 images: grown through the schedule's levels
    assert levels == sorted(levels) and levels[-1] == 1 and rows[-1]["kimg"] >= 2.0
    assert rows[0]["loss"] > 0 and np.isfinite([r["loss"] for r in rows]).all()
    again, _ = train_ae(cfg, data, max_kimg=2.0)
    assert all(torch.equal(a, b) for a, b in zip(phases.ema.state_dict().values(), again.ema.state_dict().values()))
    out = tmp_path / "ae"
    assert main(["--preset", "tiny", *sum((["--set", o] for o in fast), []), "--data", data, "--max-kimg", "1.0",
                 "--out", str(out)]) == 0
    model = alae_ray.load(out, device="cpu", level=1)  # where its training reached
    assert model.resolution == 8 and model.judge_shapes(n=16).items == 16
    assert main(["--preset", "tiny", "--data", data, "--out", str(out)]) == 2  # never over a finished one
    assert "exists" in capsys.readouterr().err
