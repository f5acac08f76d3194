"""The resampling convolutions, plain against fused (same map, fewer multiplications).

E downsamples with 3x3 conv + 2x2 average, or one stride-2 conv with the 4x4 kernel averaged over
the four shifts; G upsamples with nearest 2x + 3x3 conv, or one stride-2 transposed conv. The
authors fuse from 128x128; ``alae_ray.core.networks`` fuses where this measured faster. Forward +
backward, ms per call, both forms alternated in one process.

    python benchmarks/bench_fused.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from alae_ray.core.layers import DownConv2d, UpConv2d

# (batch, in channels, out channels, input resolution of the E block): celebahq256-like sizes
CASES = [(32, 512, 512, 8), (32, 512, 512, 16), (32, 256, 512, 32), (16, 128, 256, 64), (8, 64, 128, 128),
         (4, 32, 64, 256)]


def ms(layer, x: torch.Tensor, reps: int) -> float:
    layer(x).sum().backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        layer(x).sum().backward()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_fused torch={torch.__version__} threads={args.threads}; forward+backward ms")
    print(f"{'N':>3} {'Cin':>4} {'Cout':>4} | {'E in':>5} {'plain':>7} {'fused':>7} {'ratio':>6} | "
          f"{'G out':>5} {'plain':>7} {'fused':>7} {'ratio':>6}")
    for n, cin, cout, res in CASES:
        down = {f: DownConv2d(cin, cout, fused=f) for f in (False, True)}
        up = {f: UpConv2d(cout, cin, fused=f) for f in (False, True)}
        up[True].weight = up[False].weight
        down[True].weight = down[False].weight
        x = torch.randn(n, cin, res, res, requires_grad=True)
        y = torch.randn(n, cout, res // 2, res // 2, requires_grad=True)
        d = {f: ms(down[f], x, args.reps) for f in (False, True)}
        u = {f: ms(up[f], y, args.reps) for f in (False, True)}
        print(f"{n:>3} {cin:>4} {cout:>4} | {res:>5} {d[False]:>7.1f} {d[True]:>7.1f} {d[False] / d[True]:>5.2f}x | "
              f"{res:>5} {u[False]:>7.1f} {u[True]:>7.1f} {u[False] / u[True]:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
