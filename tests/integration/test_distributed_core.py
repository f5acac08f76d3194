"""Two gloo processes with half the global batch each, three with unequal parts of it (their shares
of 4 data streams: 1, 1 and 2), or micro-batches with gradient accumulation (of unequal sizes too),
reproduce one process with all of it at once.

This is the exactness behind the Ray Train workers at any count and ``train.batch_gpu``: shared latent
streams sliced per rank and micro-batch, explicit gradient averaging weighted by each rank's share,
the same initial weights everywhere.
No Ray: plain torch.distributed.

G's noise is on: like z, it is drawn for the global batch and sliced. What is compared is what the
distribution must get right: every phase's losses and its averaged gradients, in an iteration whose
optimizers record their gradients without stepping, so that every phase sees the same weights on
both runs, in float64, so that what is left is summation order and not the conditioning of the
networks. In float32 the same comparison is as far apart as that conditioning makes rounding: at
initialisation G's 4x4 constant is flat, so the instance norm after its first noise injection
divides by ~sqrt(eps) and the gradient of that noise weight cancels terms ~1e4 times its size (seen
in one process: micro-batches of 1 against one of 16 put phase II's gradients 2e-3 of the largest
apart, micro-batches of 3, 5e-5; float64: <= 1e-14). Weights after Adam steps are not comparable
element by element either: Adam's first step moves every parameter by about lr in the direction of
its gradient's sign, so a gradient that is zero in exact arithmetic but rounding noise moves a
parameter by lr in a random direction.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alae_ray.core.config import load_config
from alae_ray.core.phases import ALAEPhases, Shard
from alae_ray.core.schedule import stage_at

OVERRIDES = ["schedule.fade_kimg=0.016", "schedule.stable_kimg=0.016", "schedule.batch={4: 16}"]
PHASES = ("discriminator", "generator", "latent")


def reals(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def run(rank: int, world: int, port: int, kimg: float, out, batch_gpu: int = 0, streams: int = 0) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = load_config("tiny", OVERRIDES + [f"train.batch_gpu={batch_gpu}"])
    ph = ALAEPhases(cfg, shard=Shard(rank, world, streams))
    grads = []  # per optimizer step: the averaged gradients it would apply
    for opt in (ph.opt_ED, ph.opt_FG):
        def recording(opt=opt):
            grads.append([p.grad.clone() if p.grad is not None else None for g in opt.param_groups for p in g["params"]])

        opt.step = recording
    ph.images_seen = round(kimg * 1000)  # start inside a fade-in when asked
    stage = stage_at(cfg, ph.kimg)
    x = torch.nn.functional.avg_pool2d(reals(), 32 // stage.resolution)[ph.shard.part(stage.batch)]
    losses = {k: float(v) for k, v in ph.step(x, stage).items()}
    for opt in (ph.opt_ED, ph.opt_FG):
        del opt.step  # the class's step again: one real iteration, after which the ranks must agree
    ph.step(x, stage)
    params = torch.cat([p.detach().flatten() for p in ph.model.parameters()])
    if world > 1:
        dist.destroy_process_group()
    out.put((rank, losses, [[None if g is None else g.numpy() for g in s] for s in grads], params.numpy(),
             ph.shard.weight))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, kimg: float, batch_gpu: int, streams: int = 0) -> dict:
    """{rank: (losses, gradients per optimizer step, weights, share)} of a run with ``world`` processes."""
    ctx = mp.get_context("spawn")  # also for one process: run() sets the thread count
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=run, args=(r, world, port, kimg, q, batch_gpu, streams)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, *result = q.get(timeout=300)
        results[rank] = result
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


SINGLE: dict[float, tuple] = {}  # the reference run (one process, the whole batch at once) per kimg
# (workers, micro-batch, data streams): 2 workers x 8 samples; 1 worker x 2 accumulated micro-batches
# of 8; 2 x 2 of 4; 3 workers with 4, 4 and 8 samples (shares of 4 streams) in micro-batches of at
# most 3 (3 + 1, 3 + 1, 3 + 3 + 2); 1 worker x micro-batches of 5 (5 + 5 + 5 + 1)
LAYOUTS = [(2, 0, 0), (1, 8, 0), (2, 4, 0), (3, 3, 4), (1, 5, 0)]


@pytest.mark.parametrize("world,batch_gpu,streams", LAYOUTS)
@pytest.mark.parametrize("kimg", [0.0, 0.040])  # a stable level, and halfway through 8x8's fade-in
def test_workers_and_micro_batches_equal_one_process(kimg, world, batch_gpu, streams):
    if kimg not in SINGLE:
        SINGLE[kimg] = spawn(1, kimg, 0)[0]
    single, single_grads, _, _ = SINGLE[kimg]
    results = spawn(world, kimg, batch_gpu, streams)
    assert sum(r[3] for r in results.values()) == 1.0
    # each rank's losses are means over its part of the global batch: their mean weighted by the
    # parts is the single loss, to float64's summation order (measured <= 4.1e-16 relative)
    for key in ("loss_d", "r1", "loss_g", "loss_lae"):
        mean = sum(r[0][key] * r[3] for r in results.values())
        assert mean == pytest.approx(single[key], rel=1e-12), key
    # every optimizer step (E+D in I, F+G in II, both in III) has the single process's gradients, to
    # float64 summation order relative to the step's largest gradient (measured <= 9.4e-15; when the
    # losses took their scores in float32 even in a float64 run, one machine's BLAS moved them 1.4e-11)
    assert len(results[0][1]) == len(single_grads) == 4
    for step, (dist_grads, one_grads) in enumerate(zip(results[0][1], single_grads)):
        scale = max(abs(g).max() for g in one_grads if g is not None)
        for i, (a, b) in enumerate(zip(dist_grads, one_grads)):
            assert (a is None) == (b is None), (step, i)
            if a is not None:
                assert abs(a - b).max() <= 1e-12 * scale, (step, i, abs(a - b).max(), scale)
    for r in range(1, world):
        assert (results[0][2] == results[r][2]).all()  # ranks never drift apart: same weights, bit for bit
