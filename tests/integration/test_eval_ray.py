"""Distributed evaluation over Ray agrees with the single-process path.

Ray starts once for the module (2 CPUs, no dashboard). Two actors each load the checkpoint and the
random-weight feature networks from the files the driver resolved in a temporary TORCH_HOME.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alae_ray.metrics.frechet import fid_to_statistics

pytestmark = pytest.mark.ray
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, train_checkpoint):
    return str(train_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=2))


def test_distributed_and_single_process_fid_agree(ray_cluster, torch_home, tiny_checkpoint):
    from alae_ray.eval.distributed import RayRunner
    from alae_ray.eval.metrics import LocalRunner
    from alae_ray.eval.sampling import open_model
    from alae_ray.metrics.networks import resolve_weight_file

    model = open_model(tiny_checkpoint, level=1)  # 8x8 images: cheap to generate
    local = LocalRunner(model)
    weights = {k: resolve_weight_file(k) for k in ("inception", "vgg", "lpips")}
    # nothing was downloaded: the test's random weights, or LPIPS's linear layers shipped with `lpips`
    assert str(torch_home) in weights["inception"] and str(torch_home) in weights["vgg"]
    assert Path(weights["lpips"]).is_file()
    remote = RayRunner(model, tiny_checkpoint, workers=2, weights=weights, threads=1)
    try:
        assert remote.inception_fingerprint() == local.inception_fingerprint()
        real = [np.random.default_rng(i).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8) for i in range(3)]
        r_local, r_remote = local.real(real), remote.real(real)
        g_local, g_remote = local.generated(16, 6, 7, 1.0), remote.generated(16, 6, 7, 1.0)  # chunks 6, 6, 4
        assert (r_local.count, g_local.count) == (r_remote.count, g_remote.count) == (18, 16)
        for a, b in ((r_local, r_remote), (g_local, g_remote)):
            np.testing.assert_allclose(b.total, a.total, rtol=1e-5, atol=1e-7 * np.abs(a.total).max())
            np.testing.assert_allclose(b.outer, a.outer, rtol=1e-5, atol=1e-7 * np.abs(a.outer).max())
        mu, sigma = r_local.mean_cov()
        fid_local = fid_to_statistics(g_local, mu, sigma)
        fid_remote = fid_to_statistics(g_remote, *r_remote.mean_cov())
        assert fid_local > 0
        assert fid_remote == pytest.approx(fid_local, rel=1e-4)

        # PPL and LPIPS chunks: the same draws on the actors as here.
        # eps 1e-2, not PPL's 1e-4: PPL divides LPIPS by eps², which turns the float32 rounding of
        # different thread counts (actors 1, here 2) into ~1e-4 relative at 1e-4; wrong draws differ by far more.
        kw = dict(n=10, space="w", sampling="full", eps=1e-2, batch=4, seed=3, crop=False)
        assert remote.ppl(**kw).value == pytest.approx(local.ppl(**kw).value, rel=1e-4)
        np.testing.assert_allclose(remote.lpips_rec(real[:2]), local.lpips_rec(real[:2]), rtol=1e-4)
    finally:
        remote.close()


def test_cli_eval_with_ray_matches_without(ray_cluster, torch_home, tiny_checkpoint, tmp_path, capsys):
    import json

    from PIL import Image

    from alae_ray.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["eval", "--checkpoint", tiny_checkpoint, "--data", str(folder), "--level", "1", "--metric", "fid",
            "--num-samples", "10", "--batch", "4", "--cache-dir", "none", "--json"]
    def fid_from_stdout() -> float:
        out = capsys.readouterr().out
        report = out[out.index("{\n"):]  # Ray's log monitor may print "(raylet) ..." lines first
        return json.loads(report[:report.rindex("}") + 1])["results"][0]["value"]

    assert main(args) == 0
    single = fid_from_stdout()
    assert main([*args, "--ray", "--workers", "2"]) == 0
    distributed = fid_from_stdout()
    assert distributed == pytest.approx(single, rel=1e-4)
