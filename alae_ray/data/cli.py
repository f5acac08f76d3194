"""Dataset subcommands (``prepare``, ``data info``)."""

from __future__ import annotations

import json
import sys

from .images import SMALL_POLICIES


def cmd_prepare(args) -> int:
    from .prepare import PrepareOptions, prepare
    from .sources import open_source

    source = open_source(args.source, resolution=args.resolution, small=args.small, count=args.count,
                         seed=args.seed, workers=args.workers, download_root=args.download_root)
    opts = PrepareOptions(test_fraction=args.test_fraction, test_count=args.test_count, seed=args.seed,
                          shard_rows=args.shard_rows, shard_bytes=int(args.shard_mb * (1 << 20)),
                          name=args.name, progress=not args.quiet)
    m = prepare(source, args.dest, opts)
    levels = ", ".join(f"{r}: {m.counts[r].get('train', 0)}/{m.counts[r].get('test', 0)}" for r in m.resolutions)
    print(f"{m.uri}: {len(m.shards)} shards, rows train/test per level {{{levels}}}, {m.skipped} source file(s) skipped"
          + (f" (see {m.uri.rstrip('/')}/report.json)" if m.skipped else ""))
    return 0


def _info(m) -> dict:
    return {"uri": m.uri, "name": m.name, "schema_version": m.schema_version, "source": m.source,
            "channels": m.channels, "resolutions": list(m.resolutions), "columns": m.columns,
            "factors": list(m.factors),
            "counts": {str(r): {s: m.counts[r].get(s, 0) for s in ("train", "test")} for r in m.resolutions},
            "shards": len(m.shards), "bytes": sum(s.bytes for s in m.shards), "skipped": m.skipped,
            "created": m.created}


def cmd_info(args) -> int:
    from .reader import open_dataset, verify

    m = open_dataset(args.uri)
    out = _info(m)
    if args.verify:
        out["verify"] = verify(m)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{m.uri}: {m.name} (schema {m.schema_version}), {m.channels} channel(s), source {m.source.get('kind')}")
        print(f"  {out['shards']} shards, {out['bytes'] / 1e6:.1f} MB, {m.skipped} source file(s) skipped")
        print(f"  {'level':>6} {'train':>9} {'test':>9}")
        for r in m.resolutions:
            print(f"  {r:>6} {m.counts[r].get('train', 0):>9} {m.counts[r].get('test', 0):>9}")
        if m.factors:
            print(f"  factors: {', '.join(m.factors)}")
        if args.verify:
            v = out["verify"]
            print(f"  verify: {v['checked']} shards, {'all OK' if v['ok'] else str(len(v['bad'])) + ' bad'}")
    if args.verify and not out["verify"]["ok"]:
        for bad in out["verify"]["bad"]:
            print(f"alae-ray data: {bad['path']}: {bad['problem']}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    """Add the dataset subcommands to the ``alae-ray`` parser."""
    p = subparsers.add_parser(
        "prepare", help="turn an image folder, MNIST or procedural shapes into a sharded Parquet dataset",
        description="Write SOURCE as Parquet shards (one dataset per resolution level, train/test split, "
                    "manifest written last) to DEST, a local path or s3://bucket/prefix. Re-running "
                    "after an interruption finishes the dataset without rewriting finished shards.")
    p.add_argument("source", help="an image folder (recursive PNG/JPEG/WebP), a folder with MNIST IDX files, "
                                  "'mnist' (torchvision download) or 'shapes' (procedural, with factors)")
    p.add_argument("dest", help="local path or s3://bucket/prefix (AWS_* environment, AWS_ENDPOINT_URL included)")
    p.add_argument("--resolution", type=int, help="top level, a power of two (folder default: the largest power "
                                                   "of two within the first image; shapes: 32; MNIST is always 28)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--test-fraction", type=float, default=0.1, help="held-out share (default 0.1)")
    held.add_argument("--test-count", type=int, help="held-out count (the paper holds out 10000 FFHQ images)")
    p.add_argument("--seed", type=int, default=0, help="row order, split and shapes factors (default 0)")
    p.add_argument("--small", choices=SMALL_POLICIES, default="skip",
                   help="images smaller than --resolution: skip (default) or upscale")
    p.add_argument("--count", type=int, default=20000, help="shapes: number of images (default 20000)")
    p.add_argument("--shard-rows", type=int, help="images per top-level shard (default: from --shard-mb)")
    p.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB (default 64)")
    p.add_argument("--workers", type=int, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument("--download-root", help="mnist: torchvision download folder (default ~/.cache/alae-ray/mnist)")
    p.add_argument("--name", help="dataset name in the manifest (default: last part of DEST)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    d = subparsers.add_parser("data", help="inspect prepared datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    i = dsub.add_parser("info", help="print a dataset's manifest figures")
    i.add_argument("uri", help="local path or s3://bucket/prefix")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--verify", action="store_true", help="re-hash every shard and check schemas and row counts")
    i.set_defaults(func=cmd_info)
