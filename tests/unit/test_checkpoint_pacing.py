"""When checkpoints fall due: a fixed interval exactly, automatic pacing within its time budget."""

import pytest

from alae_ray.core.pacing import CheckpointPacer


def test_a_fixed_interval_ignores_the_cost():
    pacer = CheckpointPacer(every=100, images_seen=0)
    assert not pacer.due(99) and pacer.due(100)
    assert pacer.checkpointed(100, cost_s=50.0, sec_per_image=1e-4) == 200  # however slow it was
    resumed = CheckpointPacer(every=100, images_seen=250)  # a resumed run keeps the same grid
    assert resumed.next_at == 300


def test_a_fixed_interval_between_ticks_skips_no_checkpoint():
    """Ticks land past the interval's multiples (batches of 32 against every 1,000 images): each
    multiple still gets its checkpoint, at the first tick past it."""
    pacer = CheckpointPacer(every=1000, images_seen=0)
    at = [seen for seen in range(32, 10_001, 32) if pacer.due(seen) and pacer.checkpointed(seen)]
    assert at == [1024, 2016, 3008, 4000, 5024, 6016, 7008, 8000, 9024]


def test_automatic_pacing_moves_a_costly_checkpoint_on_and_keeps_the_grid():
    pacer = CheckpointPacer(every=2000, images_seen=0, budget=0.02)
    # 3 s to checkpoint, 1 ms per image: the next one >= 3 / (0.02 * 1e-3) = 150,000 images on
    assert pacer.checkpointed(2000, cost_s=3.0, sec_per_image=1e-3) == 152_000
    # a cheap checkpoint: the floor interval
    assert pacer.checkpointed(152_000, cost_s=0.01, sec_per_image=1e-3) == 154_000
    with pytest.raises(ValueError, match="interval"):
        CheckpointPacer(every=0, images_seen=0)


def test_automatic_pacing_holds_its_budget_over_a_progressive_run():
    """A run whose images get 4x dearer per level (4x4 .. 1024x1024) while every checkpoint costs the
    same 4 s (the whole model, every level's weights, each time): checkpoints take under 2% of the
    time trained, at every level, whereas a fixed 2 kimg interval would spend several times the
    training time on them at 4x4."""
    budget, every = 0.02, 2000
    pacer = CheckpointPacer(every=every, images_seen=0, budget=budget)
    images, level_images = 0, 600_000
    for level in range(9):
        per_image = 1e-6 * 4**level
        trained = stood = 0.0
        end = images + level_images
        since = images
        while images < end:
            images += 32
            trained += 32 * per_image
            if pacer.due(images):
                stood += 4.0
                pacer.checkpointed(images, cost_s=4.0, sec_per_image=per_image)
                assert pacer.next_at - images <= max(every, 4.0 / (budget * per_image)) + every
        # the last checkpoint of a level may have been paid by the level before's pace: allow one
        assert stood - 4.0 <= budget * trained, f"level {level}: {stood:.0f} s of checkpoints for {trained:.0f} s"
        assert images - since == level_images
    assert 4.0 * (level_images // every) > 10 * 1e-6 * level_images  # what a fixed 2 kimg would cost at 4x4
