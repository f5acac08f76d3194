"""Serving under overload, over real HTTP on loopback: does a flood of refinements starve generate?

Starts a local Ray + Serve with one model replica and drives it in three timed phases:

1. ``quiet``: ``--generate-clients`` closed-loop clients call ``/api/generate`` alone;
2. ``flood``: the same, while ``--refine-clients`` clients flood ``/api/refine`` (``--steps`` each,
   retrying ``--backoff-s`` after every refusal);
3. ``after``: ``/api/info`` and one generate must answer.

Prints, per phase, generate's p50/p99 and errors, and for the flood the refinements finished and
refused (503) with how fast a refusal came. Every phase is bounded in time (``--seconds``) and every
request by ``--timeout-s``. ``--compare N`` repeats the flood with ``max_concurrent_refines=N`` (N at
least the refine clients: no bound), so the bound's effect is measured side by side.

    python benchmarks/bench_serve_load.py                     # trains a tiny checkpoint first (~10 s)
    python benchmarks/bench_serve_load.py --compare 12        # and the same flood with no refinement bound
    python benchmarks/bench_serve_load.py --checkpoint runs/ffhq/checkpoint --device cuda --num-gpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_serve import make_checkpoint, payloads, percentile, start_serve


async def closed_loop(client: httpx.AsyncClient, send, stop_at: float, log: list, backoff_s: float = 0.0) -> None:
    """Send requests back to back until ``stop_at``, pausing ``backoff_s`` after a 503; log (status or
    error name, seconds) for each."""
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        try:
            status = (await send(client)).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        log.append((status, time.perf_counter() - t))
        if status == 503:
            await asyncio.sleep(backoff_s)  # an impatient client, but not a busy loop


async def phase(base: str, image: bytes, args, refine_clients: int) -> dict:
    generated: list = []
    refined: list = []
    limits = httpx.Limits(max_connections=args.generate_clients + refine_clients + 2)
    async with httpx.AsyncClient(limits=limits, timeout=args.timeout_s) as client:
        stop_at = time.perf_counter() + args.seconds
        seed = iter(range(10**9))

        def generate(c):
            return c.post(f"{base}/api/generate", json={"seed": next(seed) % 1000})

        def refine(c):
            return c.post(f"{base}/api/refine?steps={args.steps}", content=image, headers={"Content-Type": "image/png"})

        await asyncio.gather(*(closed_loop(client, generate, stop_at, generated) for _ in range(args.generate_clients)),
                             *(closed_loop(client, refine, stop_at, refined, args.backoff_s)
                               for _ in range(refine_clients)))
    ok = [t for s, t in generated if s == 200]
    refused = [t for s, t in refined if s == 503]
    return {"generate": {"ok": len(ok), "errors": len(generated) - len(ok), "p50_ms": percentile(ok, 0.5),
                         "p99_ms": percentile(ok, 0.99), "max_ms": max(ok, default=float("nan")) * 1000},
            "refine": {"ok": sum(s == 200 for s, _ in refined), "refused_503": len(refused),
                       "other": sorted({str(s) for s, _ in refined if s not in (200, 503)}),
                       "refusal_p50_ms": percentile(refused, 0.5), "refusal_p99_ms": percentile(refused, 0.99)}}


def run_config(base: str, name: str, image: bytes, args, max_refines: int) -> dict:
    from ray import serve

    from alae_ray.serve.app import ServeArgs, build_app

    bound = {"max_concurrent_refines": max_refines} if "max_concurrent_refines" in ServeArgs.model_fields else {}
    serve.run(build_app(ServeArgs(checkpoint=args.checkpoint, device=args.device, num_gpus=args.num_gpus,
                                  num_cpus=args.num_cpus, ui=False, lpips=False, **bound)),  # none: older code
              name=name, route_prefix=f"/{name}")
    url = f"{base}/{name}"
    try:
        httpx.post(f"{url}/api/generate", json={"seed": 0}, timeout=args.timeout_s)  # warm-up
        out = {"max_concurrent_refines": max_refines if bound else "-",
               "quiet": asyncio.run(phase(url, image, args, 0)),
               "flood": asyncio.run(phase(url, image, args, args.refine_clients))}
        t = time.perf_counter()
        info = httpx.get(f"{url}/api/info", timeout=args.timeout_s)
        gen = httpx.post(f"{url}/api/generate", json={"seed": 1}, timeout=args.timeout_s)
        out["after"] = {"info": info.status_code, "generate": gen.status_code, "s": time.perf_counter() - t,
                        "stats": httpx.get(f"{url}/api/stats", timeout=args.timeout_s).json()["refine"]}
        return out
    finally:
        serve.delete(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint (local or s3://); default: train a tiny one")
    p.add_argument("--refine-clients", type=int, default=12)
    p.add_argument("--generate-clients", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="steps per refinement (the API's most)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each timed phase")
    p.add_argument("--backoff-s", type=float, default=0.1, help="a refine client's pause after a 503")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per request")
    p.add_argument("--max-refines", type=int, default=1, help="max_concurrent_refines of the measured deployment")
    p.add_argument("--compare", type=int, default=0, help="also the flood with max_concurrent_refines=N")
    p.add_argument("--p99-bound-ms", type=float, default=1000.0, help="generate's p99 under the flood must stay below")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per model replica")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    args.checkpoint = args.checkpoint or make_checkpoint(Path(tempfile.mkdtemp(prefix="bench-load-")))
    image = payloads()[0]

    import ray
    from ray import serve

    base = start_serve("ray-bl-", request_timeout_s=args.timeout_s)
    from alae_ray.serve.app import ServeArgs

    first = "bounded" if "max_concurrent_refines" in ServeArgs.model_fields else "before"  # the code before the bound
    configs = [(first, args.max_refines)] + ([("unbounded", args.compare)] if args.compare else [])
    results = {}
    try:
        for name, k in configs:  # one at a time: both would share the same two cores
            results[name] = run_config(base, name, image, args, k)
    finally:
        serve.shutdown()
        ray.shutdown()
    b = results[first]
    met = (b["flood"]["generate"]["p99_ms"] < args.p99_bound_ms and b["flood"]["generate"]["errors"] == 0
           and b["flood"]["refine"]["refused_503"] > 0 and b["after"]["info"] == b["after"]["generate"] == 200)
    if args.json:
        print(json.dumps({"results": results, "bound_met": met, "total_s": time.perf_counter() - t0}, indent=2))
        return 0
    print(f"{args.refine_clients} refine clients ({args.steps} steps, {args.backoff_s:g} s back-off after a 503) "
          f"against {args.generate_clients} generate clients, {args.seconds:g} s per phase, one model replica")
    print(f"{'config':<10} {'refines':>7} {'phase':<6} {'gen ok':>6} {'gen err':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'refined':>7} {'503s':>5} {'503 p50/p99 ms':>15}")
    for name, r in results.items():
        for ph in ("quiet", "flood"):
            g, f = r[ph]["generate"], r[ph]["refine"]
            refusal = f"{f['refusal_p50_ms']:.0f}/{f['refusal_p99_ms']:.0f}" if f["refused_503"] else "-"
            print(f"{name:<10} {r['max_concurrent_refines']:>7} {ph:<6} {g['ok']:>6} {g['errors']:>7} "
                  f"{g['p50_ms']:>7.0f} {g['p99_ms']:>7.0f} {g['max_ms']:>7.0f} {f['ok']:>7} {f['refused_503']:>5} "
                  f"{refusal:>15}" + (f"  other: {f['other']}" if f["other"] else ""))
        a = r["after"]
        print(f"{'':<10} after the flood: /api/info {a['info']}, /api/generate {a['generate']} ({a['s'] * 1000:.0f} ms); "
              f"refinements {a['stats']}")
    print(f"generate p99 under the flood < {args.p99_bound_ms:g} ms, no generate errors, excess refinements "
          f"refused, replica answering afterwards: {'met' if met else 'NOT met'}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
