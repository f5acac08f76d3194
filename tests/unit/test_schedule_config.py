"""The progressive schedule (a pure function of images seen) and typed configs."""

import subprocess
import sys

import pytest

from alae_ray.core.config import ConfigError, load_config, preset_names
from alae_ray.core.schedule import split_streams, stage_at, total_kimg

TINY = load_config("tiny", ["schedule.fade=linear"])  # levels at 4, 8, 16, 32; fade 1, stable 1 kimg


def test_schedule_boundaries():
    s = stage_at(TINY, 0.0)
    assert (s.level, s.resolution, s.alpha, s.batch) == (0, 4, 1.0, 32)
    # the first level lasts as long as every other (fade + stable), all of it at alpha 1 (authors' code)
    assert stage_at(TINY, 1.5).alpha == 1.0 and stage_at(TINY, 1.999).level == 0
    s = stage_at(TINY, 2.0)  # level 1 begins with its fade-in
    assert (s.level, s.alpha, s.level_start_kimg, s.level_end_kimg) == (1, 0.0, 2.0, 4.0)
    assert stage_at(TINY, 2.5).alpha == pytest.approx(0.5)
    assert stage_at(TINY, 3.0).alpha == 1.0  # fade done, stabilising
    assert stage_at(TINY, 3.999).level == 1
    s = stage_at(TINY, 4.0)
    assert (s.level, s.batch) == (2, 16)  # batch table carries 16 from resolution 16 upwards
    s = stage_at(TINY, 6.25)
    assert (s.level, s.resolution, s.alpha) == (3, 32, 0.25)
    assert stage_at(TINY, 1e6).level == 3  # the top level never ends
    assert total_kimg(TINY) == 2 + 2 + 2 + 2 + 1


def test_sine_fade_is_smooth_and_monotone():
    cfg = load_config("tiny")
    alphas = [stage_at(cfg, 2.0 + i / 100).alpha for i in range(101)]
    assert alphas[0] == 0.0 and alphas[50] == pytest.approx(0.5) and alphas[-1] == 1.0
    assert all(b >= a for a, b in zip(alphas, alphas[1:]))
    assert alphas[1] < 0.01  # eases in


def test_schedule_is_pure():
    assert stage_at(TINY, 4.2) == stage_at(TINY, 4.2)


def test_ffhq_tables_follow_the_authors_config():
    cfg = load_config("ffhq1024")
    batches = {r: cfg.schedule.table("batch", r) for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}
    assert list(batches.values()) == [512, 256, 128, 64, 32, 32, 32, 32, 32]  # their 8-GPU table
    lrs = [cfg.schedule.table("lr", r) for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)]
    assert lrs == [0.0015] * 6 + [0.002, 0.003, 0.003]  # their LEARNING_RATES
    # 16 epochs of 60,000 images per level, half of it fading in; the top level until epoch 300
    assert (cfg.schedule.fade_kimg, cfg.schedule.stable_kimg) == (480, 480)
    assert total_kimg(cfg) == 300 * 60
    assert stage_at(cfg, 8 * 960).resolution == 1024 and stage_at(cfg, 8 * 960 + 240).alpha == pytest.approx(0.5)


@pytest.mark.parametrize("streams", [1, 16, 32])
def test_any_worker_count_up_to_the_streams_shares_them(streams):
    for world in range(1, streams + 1):
        shares = [split_streams(streams, r, world) for r in range(world)]
        assert [v for s in shares for v in s] == list(range(streams))  # each stream once, in rank order
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # as equal as the count allows


def test_more_workers_than_streams_is_an_error():
    with pytest.raises(ConfigError, match="3 workers cannot share 2 data streams"):
        split_streams(2, 0, 3)


def test_presets_load():
    assert {"tiny", "mnist", "ffhq1024", "celebahq256", "bedroom256"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.name == name


def test_overrides_and_unknown_keys():
    cfg = load_config("tiny", ["train.r1_gamma=5", "schedule.batch={64: 8}", "model.latent_size=32"])
    assert cfg.train.r1_gamma == 5.0 and cfg.model.latent_size == 32
    assert cfg.schedule.batch == {4: 32, 16: 16, 64: 8}  # tables merge
    with pytest.raises(ConfigError, match="train.r1_gama"):
        load_config("tiny", ["train.r1_gama=5"])
    with pytest.raises(ConfigError, match="train.r1_gamma: expected float"):
        load_config("tiny", ["train.r1_gamma=lots"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="power of two"):
        load_config("tiny", ["model.max_resolution=48"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["train.r1_gamma"])
    with pytest.raises(ConfigError, match="train.seed must be >= 0, got -1"):
        load_config("tiny", ["train.seed=-1"])


def test_cli_info_prints_parameter_counts():
    out = subprocess.run([sys.executable, "-m", "alae_ray.cli", "info", "--preset", "ffhq1024"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = {l.split()[0]: float(l.split()[1]) for l in out.stdout.splitlines()[1:]}
    assert lines["F"] == pytest.approx(2.10, abs=0.01)  # authors: 2.10 M
    assert lines["G"] == pytest.approx(24.12, abs=0.01)  # authors: 24.12 M
    bad = subprocess.run([sys.executable, "-m", "alae_ray.cli", "info", "--preset", "tiny", "--set", "x.y=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "x" in bad.stderr and "Traceback" not in bad.stderr
