"""The training workers' stream from S3 (moto server): a whole epoch, and a resume late in one.

    .venv/bin/python benchmarks/bench_stream.py [--copies 10] [--levels 32 128 256] [--at 0.75]

Side by side in one run, per level, one worker (rank 0 of 1), batches of ``--batch``:

- before: the level's Ray Dataset in stored order with a seeded local shuffle buffer (what
  ``alae-ray train`` read through Ray Train's dataset split); a resume read from the epoch's start
  and dropped every batch up to its position.
- now: ``alae_ray.data.stream``'s plan read as ``segments_dataset`` (one read task per row group);
  a resume starts reading at the window holding its position.

"epoch" is images per second over a whole pass, Ray Data's start-up included; "resume" is the time
from opening the stream at ``--at`` of the epoch to holding the first batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_data import replicated_source, scratch_s3, upload  # noqa: E402

from alae_ray.data import PrepareOptions, open_dataset, prepare, stream  # noqa: E402


def timed(batches, stop_after: int | None = None) -> tuple[int, float, float]:
    """(images, seconds, seconds to the first batch) over ``batches`` (or its first ``stop_after``)."""
    t0, n, first = time.perf_counter(), 0, None
    for i, b in enumerate(batches):
        n += len(b["id"])
        if first is None:
            first = time.perf_counter() - t0
        if stop_after is not None and i + 1 >= stop_after:
            break
    return n, time.perf_counter() - t0, first or 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--levels", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--buffer", type=int, default=2048, help="shuffle buffer / window rows (train's default)")
    ap.add_argument("--at", type=float, default=0.75, help="resume position, as a fraction of the epoch")
    args = ap.parse_args()
    with scratch_s3("bench-stream-") as (work, endpoint):
        prepare(replicated_source(args.copies), str(work / "ds"), PrepareOptions(progress=False, test_count=0))
        m = open_dataset(upload(work / "ds", endpoint))

        import ray

        from alae_ray.data.ray_reader import level_dataset, segments_dataset

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per execution otherwise
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = False, True
        n = args.batch

        def before(skip: int = 0):
            it = level_dataset(m, r, shuffle="none").iter_batches(
                batch_size=n, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=max(args.buffer, n),
                local_shuffle_seed=0, prefetch_batches=2)
            for i, b in enumerate(it):
                if i >= skip:
                    yield b

        def now(plan, row: int = 0):
            segments, _ = plan.from_row(row)
            chunks = segments_dataset(m, r, segments).iter_batches(batch_size=None, batch_format="numpy",
                                                                   prefetch_batches=2)
            return stream.batches(plan, row, chunks, n)

        r = args.levels[0]
        timed(before(), 1)  # warm-up: workers started, modules imported
        print(f"{m.count(args.levels[0])} images per level ({args.copies} x bedroom256) on moto S3; batch {n}, "
              f"resume at {args.at:.0%} of the epoch; {os.cpu_count()} CPUs", flush=True)
        header = (f"{'level':>5} {'window':>6} | {'epoch before':>12} {'now':>9} {'now/before':>10} | "
                  f"{'resume before':>13} {'now':>7} {'before/now':>10}")
        print(header)
        print("-" * len(header))
        for r in args.levels:
            plan = stream.plan_epoch(stream.blocks(m, r), seed=0, resolution=r, epoch=0, stream=0, streams=1,
                                     window=stream.window_rows(args.buffer, m.channels, r))
            batches = plan.rows // n
            skip = int(batches * args.at)
            n1, t1, _ = timed(before())
            n2, t2, _ = timed(now(plan))
            assert n1 == n2 == batches * n, (n1, n2, batches * n)
            _, _, f1 = timed(before(skip), 1)
            _, _, f2 = timed(now(plan, skip * n), 1)
            print(f"{r:>5} {plan.window:>6} | {n1 / t1:>8.0f} i/s {n2 / t2:>5.0f} i/s {(n2 / t2) / (n1 / t1):>10.2f} | "
                  f"{f1:>11.2f} s {f2:>5.2f} s {f1 / f2:>10.2f}", flush=True)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
