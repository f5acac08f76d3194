"""Validation during training (train.validation), the parts that need no Ray: which judge a run gets,
what it refuses, and the metrics a judge returns for a checkpoint. The Ray run is in test_train_ray."""

from __future__ import annotations

import math

import pytest

from alae_ray.core.config import ConfigError, load_config
from alae_ray.judges import digits, shapes
from alae_ray.train.validation import METRICS, console_line, judge_checkpoint, resolve_validation


def test_auto_picks_the_datas_judge_and_nothing_where_none_fits(tmp_path):
    style, mlp = load_config("tiny"), load_config("mnist")
    v = resolve_validation("auto", style, {"kind": "shapes"})
    assert v.judge == "shapes" and v.resolutions is None and v.judges(4) and v.keep_best is None
    assert resolve_validation("auto", style, {"kind": "folder", "path": str(tmp_path)}) is None
    assert resolve_validation("auto", mlp, {"kind": "shapes"}) is None  # the shapes judge reads RGB StyleALAEs
    # MNIST from IDX files that are still there: the digits judge, at 32x32 only for a StyleALAE
    digits_style = load_config("mnist_style_cpu")
    v = resolve_validation("auto", digits_style, {"kind": "mnist-idx", "path": str(tmp_path)}, keep_best="val_recon_pct")
    assert v.judge == "digits" and v.resolutions == (digits.RESOLUTION,) and not v.judges(16) and v.judges(32)
    assert v.order == "max"
    assert resolve_validation("auto", digits_style, {"kind": "mnist-idx", "path": str(tmp_path / "gone")}) is None
    assert resolve_validation("off", style, {"kind": "shapes"}) is None


@pytest.mark.parametrize("judge, cfg, source, keep_best, words", [
    ("shapes", "mnist", {"kind": "shapes"}, None, "--validate shapes: the shapes judge needs a StyleALAE on RGB"),
    ("digits", "tiny", {"kind": "shapes"}, None, "--validate digits: the digits judge reads one-channel"),
    ("digits", "mnist_style_cpu", {"kind": "folder"}, None, "not prepared from MNIST IDX files"),
    ("shapes", "tiny", {"kind": "shapes"}, "val_recon_pct", "the shapes judge reports val_position_px"),
    ("auto", "tiny", {"kind": "folder"}, "val_hue_deg", "--keep-best val_hue_deg: this run has no judge"),
    ("fid", "tiny", {"kind": "shapes"}, None, "--validate must be one of auto, shapes, digits, off"),
])
def test_what_cannot_be_validated_is_refused_in_one_line(judge, cfg, source, keep_best, words):
    with pytest.raises(ConfigError) as err:
        resolve_validation(judge, load_config(cfg), source, keep_best=keep_best)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_is_judged_at_the_level_it_reached(tmp_path, train_checkpoint):
    ckpt = train_checkpoint(tmp_path / "ckpt", "tiny", kimg=0.1)
    got = judge_checkpoint(ckpt, "shapes", None)
    assert set(got) == {"kimg", "val_resolution", *METRICS["shapes"]}
    assert got["kimg"] == pytest.approx(0.128) and got["val_resolution"] == 4  # tiny's first level
    # the same numbers as the judge run by hand on that model
    from alae_ray.core.checkpoint import load_model

    network, _, _ = load_model(ckpt)
    by_hand = shapes.judge(shapes.network_reconstructor(network, 0, 1.0), 4)
    assert got["val_hue_deg"] == by_hand.score("hue").reconstructions
    assert got["val_shape_pct"] == by_hand.score("shape").reconstructions
    assert all(math.isfinite(v) for v in got.values())
    line = console_line({**got, "checkpoint": "checkpoint_x", "val_seconds": 1.25})
    assert line.startswith("validated checkpoint_x (0.13 kimg, 4px, 1.2 s): position_px=")


def test_left_is_one_for_a_constant_image_and_near_zero_for_the_inputs():
    import numpy as np

    blind = shapes.judge(lambda x: np.zeros_like(x), 16, n=64)
    # no shape found: the blind guess for every factor (the means are float32: equal to float32 precision)
    assert blind.left == pytest.approx(1.0, rel=1e-6)
    exact = shapes.judge(lambda x: x, 16, n=64)
    assert exact.left < 0.1 and exact.to_dict()["left"] == exact.left


def test_the_shapes_objective_is_the_judges_left_on_the_ema_model(tmp_path, train_checkpoint):
    import numpy as np

    from alae_ray.core.checkpoint import load_model
    from alae_ray.core.schedule import stage_at
    from alae_ray.train.objective import Evaluator

    network, cfg, progress = load_model(train_checkpoint(tmp_path / "ckpt", "tiny", kimg=0.1))
    stage = stage_at(cfg, progress["images_seen"] / 1000)
    held_out = {4: np.zeros((2, 3, 4, 4), np.uint8)}
    got = Evaluator({"kind": "shapes"}, held_out, cfg.model)(network, stage)
    j = shapes.judge(shapes.network_reconstructor(network, stage.level, stage.alpha), stage.resolution)
    assert got["objective"] == j.left and got["objective_finite"]
    assert got["obj_hue"] == j.score("hue").reconstructions and got["obj_shape"] == j.score("shape").reconstructions
