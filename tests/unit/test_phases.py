"""The three phases of Algorithm 1: what each one updates, the losses, EMA and exact resume."""

import math

import pytest
import torch

from alae_ray.core import losses
from alae_ray.core.checkpoint import CheckpointError, load_model, read_checkpoint, write_checkpoint
from alae_ray.core.config import load_config
from alae_ray.core.pacing import CheckpointPacer
from alae_ray.core.phases import ALAEPhases, AutoencoderPhases, NonFiniteLossError, ema_beta
from alae_ray.core.schedule import stage_at
from alae_ray.core.session import Session, TensorImages, train

TINY = load_config("tiny", ["train.ema_kimg=0.1"])


def snapshot(phases):
    return {name: [p.detach().clone() for p in getattr(phases.model, name).parameters()] for name in "FGED"}


def changed(before, after):
    return {name for name in "FGED" if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}


@pytest.fixture()
def phases():
    return ALAEPhases(TINY)


def reals(n=32, res=32, seed=0):
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kimg", [0.0, 2.5])  # a stable level and a fade-in
def test_each_phase_updates_only_its_networks(phases, kimg):
    stage = stage_at(TINY, kimg)
    phases.set_stage(stage)
    x = TensorImages(reals())(stage, slice(0, stage.batch))
    before = snapshot(phases)
    out = phases.discriminator_phase(x, stage)
    assert changed(before, snapshot(phases)) == {"E", "D"}
    assert set(out) >= {"loss_d", "r1"}
    before = snapshot(phases)
    out = phases.generator_phase(stage)
    assert changed(before, snapshot(phases)) == {"F", "G"}
    assert all(p.requires_grad for p in phases.model.parameters())  # E, D unfrozen again
    before = snapshot(phases)
    d_steps = [phases.opt_ED.state[p]["step"].item() for p in phases.model.D.parameters()]
    out = phases.latent_phase(stage)
    # the authors' step III: F(z) feeds G with its gradient, so F moves too; D takes a zero-gradient
    # step (its Adam state advances, its weights do not), as their torch 1.x zero_grad left it
    assert changed(before, snapshot(phases)) == {"E", "G", "F"}
    assert [phases.opt_ED.state[p]["step"].item() for p in phases.model.D.parameters()] == [s + 1 for s in d_steps]
    assert math.isfinite(out["loss_lae"])


def test_every_generation_moves_the_w_average(phases):
    """Like the authors' generate(): three updates per iteration, each towards that batch's mean F(z)."""
    stage = stage_at(TINY, 0.0)
    calls = []
    update = phases.model.update_w_avg
    phases.model.update_w_avg = lambda w, beta: (calls.append(w.clone()), update(w, beta))
    phases.step(TensorImages(reals())(stage, slice(0, stage.batch)), stage)
    assert len(calls) == 3
    avg = phases.model.w_avg
    assert torch.equal(avg, avg[:1].expand_as(avg))  # every style input's row moves alike
    assert avg.abs().sum() > 0


def test_style_mixing_crossover_covers_every_style_input():
    """Crossover uniform in 1..S (S: no mixing), as the authors' random.randint(1, 2 * (lod + 1))."""
    ph = ALAEPhases(load_config("tiny", ["train.style_mixing_prob=1.0"]))
    stage = stage_at(TINY, 7.0)  # top level: S = 8
    seen = set()
    for _ in range(200):
        ws, w = ph._styles(ph._draws(4, stage, mixing=True), slice(0, 4), stage.level)
        same = (ws == w.unsqueeze(1)).all(dim=(0, 2))
        seen.add(int(same.sum()))  # style inputs before the crossover keep w
        assert same[:int(same.sum())].all()
    assert seen == set(range(1, 9))


def test_r1_is_hand_computed_squared_gradient_norm():
    # score_i = sum(a * x_i) + sum(x_i^2): grad_x = a + 2 x_i, penalty = mean_i ||a + 2 x_i||^2
    x = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]]], requires_grad=True)  # [2, 1, 1, 2]
    a = torch.tensor([0.5, -1.0]).view(1, 1, 1, 2)
    score = (a * x).flatten(1).sum(1) + x.pow(2).flatten(1).sum(1)
    by_hand = ((0.5 + 2 * 1.0) ** 2 + (-1.0 - 4.0) ** 2 + (0.5 + 1.0) ** 2 + (-1.0 + 6.0) ** 2) / 2
    r1 = losses.r1_penalty(score, x)
    assert r1.item() == pytest.approx(by_hand)
    r1.backward()  # the graph is kept, so the penalty itself can be minimised
    assert x.grad is not None


def test_losses_match_their_formulas():
    real, fake = torch.tensor([1.0, -0.5]), torch.tensor([0.3, 2.0])
    sp = lambda t: math.log1p(math.exp(t))
    assert losses.d_logistic_loss(real, fake).item() == pytest.approx(
        (sp(0.3) + sp(2.0)) / 2 + (sp(-1.0) + sp(0.5)) / 2)
    assert losses.g_nonsaturating_loss(fake).item() == pytest.approx((sp(-0.3) + sp(-2.0)) / 2)
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0]], requires_grad=True)
    lae = losses.latent_reciprocity_loss(target, w)
    assert lae.item() == pytest.approx(2.5)
    lae.backward()
    assert target.grad is None  # F(z) is a constant target


def test_ema_half_life():
    assert ema_beta(100, 1.0) ** 10 == pytest.approx(0.5)  # 10 steps of 100 images = one half-life
    ph = ALAEPhases(TINY)
    with torch.no_grad():
        for p in ph.ema.parameters():
            p.zero_()
        for p in ph.model.parameters():
            p.fill_(1.0)
    for _ in range(10):  # ema_kimg = 0.1: ten batches of 10 images
        ph.update_ema(10)
    vals = torch.cat([p.flatten() for p in ph.ema.parameters()])
    assert torch.allclose(vals, torch.full_like(vals, 0.5), atol=1e-5)


def test_optimizer_state_reset_on_level_change(phases):
    src = TensorImages(reals())
    stage0 = stage_at(TINY, 0.0)
    phases.step(src(stage0, slice(0, stage0.batch)), stage0)
    assert len(phases.opt_ED.state) > 0 and len(phases.opt_FG.state) > 0
    phases.set_stage(stage0)
    assert len(phases.opt_ED.state) > 0  # same level: kept
    stage1 = stage_at(TINY, 2.5)
    phases.set_stage(stage1)
    assert len(phases.opt_ED.state) == 0 and len(phases.opt_FG.state) == 0
    assert all(g["lr"] == stage1.lr for g in phases.opt_ED.param_groups)


@pytest.mark.parametrize("world,streams", [(2, 0), (2, 4), (3, 4), (4, 8)])
def test_same_global_batch_latents_across_world_sizes(world, streams):
    from alae_ray.core.phases import Shard
    one = ALAEPhases(TINY, shard=Shard(0, 1))._z(8)
    ranks = [ALAEPhases(TINY, shard=Shard(r, world, streams))._z(8) for r in range(world)]
    assert torch.equal(torch.cat(ranks), one)


def test_shards_split_a_batch_by_their_data_streams():
    from alae_ray.core.config import ConfigError
    from alae_ray.core.phases import Shard
    parts = [Shard(r, 3, 16).part(32) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 10), (10, 20), (20, 32)]  # streams 0-4, 5-9, 10-15
    assert [Shard(r, 3, 16).weight for r in range(3)] == [5 / 16, 5 / 16, 6 / 16]
    assert Shard(1, 2).part(8) == slice(4, 8) and Shard(1, 2).weight == 0.5  # no streams: equal halves
    with pytest.raises(ConfigError, match="5 workers cannot share 4 data streams"):
        Shard(0, 5, 4).part(8)
    with pytest.raises(ValueError, match="a global batch of 12 does not split into 8"):
        Shard(0, 2, 8).part(12)


def test_non_finite_loss_names_phase_and_iteration(phases):
    stage = stage_at(TINY, 0.0)
    x = torch.full((32, 3, 4, 4), float("nan"))
    phases.discriminator_phase(x, stage)  # no waiting for the device inside an iteration...
    with pytest.raises(NonFiniteLossError, match=r"loss_d in the discriminator phase at iteration 0"):
        phases.check_finite()  # ...the flag, kept on the device, is read at the next tick
    phases.iteration = 5
    phases.discriminator_phase(x, stage)
    with pytest.raises(NonFiniteLossError, match=r"at iteration 0 \(seen at iteration 5"):  # the first one
        phases.check_finite()


def test_the_loop_stops_at_the_tick_after_a_non_finite_loss():
    cfg = load_config("tiny", ["schedule.batch={4: 8}"])
    ph = ALAEPhases(cfg)
    calls = []

    def batches(stage, part):  # the second batch is NaN
        calls.append(part)
        x = reals(part.stop - part.start, 4)
        return x * float("nan") if len(calls) == 2 else x

    ticks = []
    with pytest.raises(NonFiniteLossError, match="discriminator phase at iteration 1"):
        train(ph, batches, max_kimg=0.064, tick_kimg=0.032, callbacks=[lambda t, _: ticks.append(t)])
    assert ticks == [] and len(calls) == 4  # found at the first tick (4 x 8 images): nothing reported


def test_the_ae_baseline_trains_e_and_g_alone_and_names_its_own_phase():
    """AE(ℓ2) on the same session: E and G change, F and D do not; a NaN names its phase."""
    ph = AutoencoderPhases(TINY)
    before = {k: v.clone() for k, v in ph.model.state_dict().items()}
    train(ph, TensorImages(reals(64), seed=0), max_kimg=0.064)
    changed = {k.split(".")[0] for k, v in ph.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"E", "G"}, changed
    with pytest.raises(NonFiniteLossError, match="non-finite loss_ae in the autoencoder phase"):
        train(ph, lambda stage, part: reals(part.stop - part.start, 4) * float("nan"), max_kimg=0.128)


def test_exact_resume_through_a_session_checkpoint(tmp_path):
    """A session's last snapshot, written as a checkpoint and restored into new phases and data,
    trains on exactly as the session that went on."""
    src_data = reals(64)
    a, src_a = ALAEPhases(TINY), TensorImages(src_data, seed=1)
    saved = []

    def save(tick, snapshot):
        if snapshot is not None:
            write_checkpoint(tmp_path / "ckpt", TINY, snapshot.tensors, snapshot.progress)
            saved.append(tick.images_seen)

    Session(a, src_a, max_kimg=0.96, pacer=CheckpointPacer(10_000, 0), callbacks=[save]).run()
    assert saved == [960]  # no interval passed: the final snapshot only (30 iterations of 32)
    cont = []
    train(a, src_a, max_kimg=1.6, tick_kimg=0.0, callbacks=[lambda t, _: cont.append(t.losses)])  # into the fade-in

    cfg, tensors, progress = read_checkpoint(tmp_path / "ckpt")
    assert cfg == TINY
    b = Session(ALAEPhases(cfg), TensorImages(src_data, seed=1), max_kimg=1.6, tick_kimg=0.0,
                callbacks=[lambda t, _: resumed.append(t.losses)])
    b.restore(tensors, progress)
    resumed = []
    b.run()
    assert len(resumed) == len(cont) > 10
    for x, y in zip(cont, resumed):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6)


def test_checkpoint_is_atomic_and_loads_without_code(tmp_path):
    ph = ALAEPhases(TINY)
    target = tmp_path / "ckpt"
    write_checkpoint(target, TINY, ph.tensors(), ph.progress())
    model, cfg, progress = load_model(target)
    assert cfg == TINY and progress["images_seen"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left over
    # overwrite keeps a complete checkpoint at the final name
    ph.images_seen = 123
    write_checkpoint(target, TINY, ph.tensors(), ph.progress())
    assert read_checkpoint(target)[2]["images_seen"] == 123
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    # a failing write leaves the previous checkpoint untouched
    with pytest.raises(Exception):
        write_checkpoint(target, TINY, {"bad": "not a tensor"}, ph.progress())
    assert read_checkpoint(target)[2]["images_seen"] == 123
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_checkpoint_mismatching_config_is_named(tmp_path):
    ph = ALAEPhases(TINY)
    write_checkpoint(tmp_path / "c", load_config("tiny", ["model.latent_size=32"]), ph.tensors(), ph.progress())
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_model(tmp_path / "d")


def test_a_corrupt_progress_file_is_named(tmp_path):
    ph = ALAEPhases(TINY)
    write_checkpoint(tmp_path / "c", TINY, ph.tensors(), ph.progress())
    progress = tmp_path / "c" / "progress.json"
    for text in ('{"images_seen": 12', "[1, 2]"):  # cut off mid-write; valid JSON of the wrong kind
        progress.write_text(text)
        with pytest.raises(CheckpointError, match="progress.json"):
            load_model(tmp_path / "c")


def test_bf16_autocast_trains_through_a_fade_in_close_to_float32():
    """The style presets' CUDA default (bf16 autocast), run on the CPU through the same code path
    (train.cpu_autocast): across a level change and fade-in the losses stay finite and within bf16's
    reach of float32's. (The fade-in blend once mixed a bf16 and a float32 path and failed.)"""
    runs = {}
    for amp in (False, True):
        cfg = load_config("tiny", [f"train.cpu_autocast={amp}", "schedule.fade_kimg=0.064",
                                   "schedule.stable_kimg=0.032", "schedule.batch={4: 16}"])
        p = ALAEPhases(cfg)
        assert p.amp == amp
        seen = []
        train(p, TensorImages(reals(64), seed=0), max_kimg=0.16, tick_kimg=0.016,
              callbacks=[lambda t, _: seen.append((t.stage.level, t.stage.alpha, {k: float(v) for k, v in t.losses.items()}))])
        runs[amp] = seen
    assert any(level == 1 and 0 < alpha < 1 for level, alpha, _ in runs[True])  # through a fade-in
    for (_, _, fp32), (_, _, bf16) in zip(runs[False], runs[True]):
        assert all(math.isfinite(v) for v in bf16.values())
    # the first tick, before the two runs' weights drift apart: within about two bf16 steps (2 x 2^-8)
    first32, first16 = runs[False][0][2], runs[True][0][2]
    for k in ("loss_d", "loss_g", "loss_lae"):
        assert first16[k] == pytest.approx(first32[k], rel=2 * 2**-8), k
