"""Two gloo processes with half the global batch each reproduce one process with all of it.

This is the exactness behind the Ray Train workers: shared latent stream sliced per rank, explicit
gradient averaging, the same initial weights everywhere. No Ray: plain torch.distributed.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alae_ray.core.config import load_config
from alae_ray.core.phases import ALAEPhases, Shard
from alae_ray.core.schedule import stage_at

OVERRIDES = ["train.noise=false", "schedule.fade_kimg=0.032", "schedule.stable_kimg=0.032", "schedule.batch={4: 16}"]
STEPS = 4


def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(16, 3, 32, 32, generator=g) * 2 - 1 for _ in range(STEPS)]


def run(rank: int, world: int, port: int, out) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = load_config("tiny", OVERRIDES)
    ph = ALAEPhases(cfg, shard=Shard(rank, world))
    losses = []
    for x in batches():
        stage = stage_at(cfg, ph.kimg)
        n = stage.batch // world
        x = torch.nn.functional.avg_pool2d(x, 32 // stage.resolution)[rank * n:(rank + 1) * n]
        losses.append(ph.step(x, stage))
    params = torch.cat([p.detach().flatten() for p in ph.model.parameters()])
    if world > 1:
        dist.destroy_process_group()
    out.put((rank, losses, params.numpy()))  # by value: a shared-memory tensor dies with the child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    run(0, 1, 0, q)
    _, single, single_params = q.get()
    single_params = torch.from_numpy(single_params)
    port = free_port()
    procs = [ctx.Process(target=run, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, losses, params = q.get(timeout=300)
        results[rank] = (losses, torch.from_numpy(params))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # each rank's losses are means over its half of the global batch: their mean is the single loss
    for step in range(STEPS):
        for key in ("loss_d", "r1", "loss_g", "loss_lae"):
            mean = (results[0][0][step][key] + results[1][0][step][key]) / 2
            assert mean == pytest.approx(single[step][key], rel=1e-3), (step, key)  # float summation order
    # and the weights after four iterations (crossing into a fade-in) agree
    # (zero-initialised biases move by about +-lr per Adam step whatever the gradient's size, so a
    # near-zero gradient that rounds the other way shows as ~2 lr; hence the absolute tolerance)
    assert torch.allclose(results[0][1], single_params, rtol=1e-3, atol=0.02)
    assert torch.equal(results[0][1], results[1][1])  # ranks never drift apart
