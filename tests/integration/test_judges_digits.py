"""The digits judge: its classifier scores real MNIST digits (../shared/data/mnist-t10k) at 98% or
more, is trained reproducibly and cached as plain tensors; real digits score as real digits, a
constant image as the blind guess; models it does not fit are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alae_ray.judges.digits import RECIPE, Digits, DigitsClassifier, judge

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-t10k"


@pytest.fixture(scope="module")
def digits():
    return Digits.load(MNIST)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("judges")


@pytest.fixture(scope="module")
def classifier(digits, cache):
    return DigitsClassifier.fit(digits, cache)


def test_the_judged_digits_are_held_out_from_the_classifier(digits):
    assert digits.source == "MNIST t10k[:8000]" and len(digits.fit_images) == 8000
    assert digits.images.shape == (2000, 1, 32, 32) and digits.images.dtype == np.uint8
    assert digits.images[:, :, :2].max() == 0 and digits.images[:, :, :, -2:].max() == 0  # zero-padded 28x28


def test_the_classifier_scores_real_digits_at_98_percent_and_is_cached_as_tensors(digits, classifier, cache):
    assert classifier.accuracy >= 98.0
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"digits-{digits.digest(RECIPE)}.json", f"digits-{digits.digest(RECIPE)}.safetensors"]
    meta = json.loads((cache / files[0]).read_text())
    assert meta["accuracy"] == classifier.accuracy and meta["recipe"] == RECIPE
    again = DigitsClassifier.fit(digits, cache)  # from the cache: the same weights, no training
    for a, b in zip(classifier.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)


def test_training_the_classifier_is_reproducible(digits, tmp_path):
    small = Digits(digits.fit_images[:1000], digits.fit_labels[:1000], digits.images[:200], digits.labels[:200], "t")
    a = DigitsClassifier.fit(small, tmp_path / "a", recipe={"epochs": 1})
    b = DigitsClassifier.fit(small, tmp_path / "b", recipe={"epochs": 1})
    for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()):
        assert torch.equal(x, y)


def test_real_digits_score_as_real_digits(digits, classifier):
    j = judge(lambda x: x, lambda n: digits.images[:n], digits, classifier)
    assert j.items == 2000
    assert j.reconstruction == j.classifier_accuracy == classifier.accuracy
    assert j.frechet == pytest.approx(0.0, abs=1e-6)  # the generations are the judged digits themselves
    assert 0.0 < j.frechet_real < j.frechet_blind / 20
    assert abs(j.balance - j.balance_real) < 1.0 and j.balance_real < 3.0  # MNIST's own classes are near 10% each
    assert sum(j.class_shares) == pytest.approx(100.0)


@pytest.mark.parametrize("value", [0, 255])
def test_a_constant_image_scores_as_the_blind_guess(digits, classifier, value):
    j = judge(lambda x: np.full_like(x, value), lambda n: np.full((n, 1, 32, 32), value, np.uint8), digits, classifier)
    assert j.balance == pytest.approx(90.0)  # every generation in one class
    assert j.reconstruction == pytest.approx(float((digits.labels == classifier.predict(np.full((1, 1, 32, 32), value, np.uint8))[0]).mean() * 100))
    assert j.reconstruction < 15.0
    if value == 0:
        assert j.reconstruction == j.reconstruction_blind and j.frechet == pytest.approx(j.frechet_blind)


def test_images_it_cannot_judge_are_refused_in_one_line(digits, classifier):
    with pytest.raises(ValueError, match=r"one-channel 28x28 or 32x32 digits, got images of shape \(4, 3, 32, 32\)"):
        classifier.predict(np.zeros((4, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="reads uint8 images, got float32"):
        classifier.predict(np.zeros((4, 1, 32, 32), np.float32))


@pytest.fixture()
def judges_home(classifier, cache, monkeypatch):
    """ALAE_RAY_CACHE pointing at a copy of the classifier trained above (<cache>/judges)."""
    monkeypatch.setenv("ALAE_RAY_CACHE", str(cache.parent))
    (cache.parent / "judges").mkdir(exist_ok=True)
    for f in cache.iterdir():
        (cache.parent / "judges" / f.name).write_bytes(f.read_bytes())


def test_models_are_judged_from_the_api_and_from_alae_ray_eval(tmp_path, train_checkpoint, judges_home, capsys):
    import alae_ray
    from alae_ray.cli import main

    style = train_checkpoint(tmp_path / "style", overrides=["model.channels=1"])  # 1-channel, briefly, on noise
    j = alae_ray.load(style, device="cpu", level=3).judge_digits(MNIST, n=200)
    assert j.items == 200 and j.reconstruction < 50.0 and j.frechet > j.frechet_real
    assert main(["eval", "--checkpoint", str(style), "--level", "3", "--metric", "digits", "--data", str(MNIST),
                 "--num-samples", "200", "--json"]) == 0
    rows = {r["metric"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert set(rows) == {"digits/reconstruction_accuracy", "digits/generation_balance", "digits/frechet"}
    assert rows["digits/reconstruction_accuracy"]["value"] == pytest.approx(j.reconstruction)
    assert rows["digits/frechet"]["details"]["space"].endswith("(not Inception FID)")
    mlp = alae_ray.load(train_checkpoint(tmp_path / "mlp", preset="mnist"), device="cpu")  # 28x28, padded to 32
    assert mlp.judge_digits(MNIST, n=100).items == 100


def test_validation_judges_a_checkpoint_of_digits_as_the_api_does(tmp_path, train_checkpoint, judges_home):
    """train.validation's judge of a checkpoint: the digits judge's figures, flat; None for a StyleALAE
    still below the judge's 32x32."""
    import alae_ray
    from alae_ray.train.validation import judge_checkpoint

    mlp = train_checkpoint(tmp_path / "mlp", preset="mnist")
    got = judge_checkpoint(mlp, "digits", str(MNIST))
    j = alae_ray.load(mlp, device="cpu").judge_digits(MNIST)
    assert (got["val_recon_pct"], got["val_balance_pts"], got["val_frechet"]) == (j.reconstruction, j.balance,
                                                                                 j.frechet)
    small = train_checkpoint(tmp_path / "gray", overrides=["model.channels=1"])  # tiny's first level: 4x4
    assert judge_checkpoint(small, "digits", str(MNIST)) is None


def test_a_model_the_judge_does_not_fit_is_refused_in_one_line(tmp_path, train_checkpoint):
    import alae_ray

    rgb = alae_ray.load(train_checkpoint(tmp_path / "rgb"), device="cpu")
    with pytest.raises(ValueError, match=r"^the digits judge reads one-channel 28x28 or 32x32 digits; this model is a "
                                         r"style ALAE of 3-channel 32px images$"):
        rgb.judge_digits(MNIST)
    small = alae_ray.load(train_checkpoint(tmp_path / "gray", overrides=["model.channels=1"]), device="cpu", level=1)
    with pytest.raises(ValueError, match=r"reads 32x32 digits; this model is at 8px \(level 1\)"):
        small.judge_digits(MNIST)
