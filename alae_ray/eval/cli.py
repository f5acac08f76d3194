"""``alae-ray eval``: metrics of a checkpoint, printed as a table (or JSON with ``--json``).

    alae-ray eval --checkpoint runs/ffhq/ckpt --data s3://bucket/ffhq --metric fid --metric ppl_w
    alae-ray eval --checkpoint runs/mnist-alae --data ../shared/data/mnist-t10k --metric mnist_protocol \
        --ae-checkpoint runs/mnist-ae
"""

from __future__ import annotations

import json
import os
import time

METRIC_NAMES = ("fid", "fid_rec", "ppl_z", "ppl_w", "lpips_rec", "mnist_protocol", "shapes", "digits")
DEFAULT_CACHE = os.path.join("~", ".cache", "alae-ray", "fid-stats")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: FID, PPL, LPIPS, the MNIST protocol, the shapes and digits judges")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (path or file:// URI)")
    p.add_argument("--metric", action="append", required=True, metavar="NAME",
                   help=f"metric, repeatable or comma-separated: {', '.join(METRIC_NAMES)}")
    p.add_argument("--data", help="real images: image folder, MNIST IDX folder (or mnist:DIR), prepared dataset")
    p.add_argument("--split", default="test", help="split of --data (folders: sub-folder if present; MNIST: test = t10k)")
    p.add_argument("--num-samples", type=int, default=50_000, help="generated images / PPL pairs / reconstructions (paper: 50k)")
    p.add_argument("--num-real", type=int, default=50_000, help="real images for the statistics (at most the split's size)")
    p.add_argument("--batch", type=int, default=64, help="images per chunk (also the unit of work of Ray workers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--psi", type=float, default=1.0, help="truncation for fid (1 = none)")
    p.add_argument("--eps", type=float, default=1e-4, help="PPL step epsilon")
    p.add_argument("--ppl-sampling", default="full,end", help="PPL sampling: full, end or full,end")
    p.add_argument("--crop", action="store_true", help="PPL: StyleGAN's centre crop for faces")
    p.add_argument("--level", type=int, help="resolution level (default: the level the run reached)")
    p.add_argument("--no-ema", action="store_true", help="evaluate the trained networks, not the EMA copy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="cache of real statistics; 'none' disables it")
    p.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth (or $ALAE_RAY_INCEPTION_WEIGHTS)")
    p.add_argument("--vgg-weights", help="local torchvision vgg16-397923af.pth (or $ALAE_RAY_VGG_WEIGHTS)")
    p.add_argument("--lpips-weights", help="local LPIPS v0.1 vgg.pth (or $ALAE_RAY_LPIPS_WEIGHTS)")
    p.add_argument("--ray", action="store_true", help="spread feature extraction over Ray actors")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (with --ray)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch default)")
    g = p.add_argument_group("mnist_protocol")
    g.add_argument("--ae-checkpoint", help="plain ℓ2 autoencoder (python -m alae_ray.eval.mnist_models ae) as baseline")
    g.add_argument("--trials", type=int, default=5)
    g.add_argument("--n-train", type=int, default=8000)
    g.add_argument("--n-test", type=int, default=2000)
    g.add_argument("--writers", default="same", help="same, different or same,different")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)


def parse_metrics(values: list[str]) -> list[str]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    for n in names:
        if n not in METRIC_NAMES:
            raise ValueError(f"unknown metric {n!r}; choose from {', '.join(METRIC_NAMES)}")
    return list(dict.fromkeys(names))


def format_table(rows: list[dict]) -> str:
    lines = [f"{'metric':<34} {'value':>12}  details"]
    for r in rows:
        details = ", ".join(f"{k}={v}" for k, v in r["details"].items())
        lines.append(f"{r['metric']:<34} {r['value']:>12.4f}  {details}")
    return "\n".join(lines)


def _mnist_rows(args, model) -> list[dict]:
    from ..data.idx import load_mnist
    from .mnist_models import load_plain_autoencoder
    from .mnist_protocol import encoder_features, pixel_features, run_protocol
    from .real_images import _mnist_folder, mnist_split_name

    if model.cfg.model.kind != "mlp":
        raise ValueError("mnist_protocol needs an MLP ALAE checkpoint (preset mnist)")
    folder = _mnist_folder(args.data or "")
    if folder is None:
        raise ValueError("mnist_protocol needs --data pointing at MNIST IDX files")
    images, labels = load_mnist(folder, mnist_split_name(args.split))
    feats = {"alae": encoder_features(model.network.E, images), "pixels": {"raw": pixel_features(images)}}
    if args.ae_checkpoint:
        feats["ae_l2"] = encoder_features(load_plain_autoencoder(args.ae_checkpoint).E, images)
    writers = {"same": "same_writers", "different": "different_writers"}
    splits = [writers[w.strip()] for w in args.writers.split(",")]
    rows = run_protocol(feats, labels, splits=splits, n_train=args.n_train, n_test=args.n_test,
                        trials=args.trials, seed=args.seed)
    return [{"metric": f"mnist/{r.method}/{r.features}/{r.classifier}/{r.split}", "value": r.mean,
             "details": {"std": round(r.std, 4), "trials": len(r.trials),
                         "n_train": args.n_train if r.split == "same_writers" else min(args.n_train, 4000),
                         "n_test": args.n_test if r.split == "same_writers" else min(args.n_test, 2000)},
             "trials": r.trials} for r in rows]


def _shapes_rows(args, model) -> list[dict]:
    """The shapes judge: per factor, the reconstructions' mean error (shape: % right) with the inputs'
    own and the blind guess's beside it; --num-samples held-out items (at most 4096: seconds on a CPU)."""
    judgement = model.judge_shapes(n=min(args.num_samples, 4096), seed=args.seed)
    return [{"metric": f"shapes/{s.factor}", "value": s.reconstructions,
             "details": {"unit": s.unit.strip(), "inputs": round(s.inputs, 4), "blind": round(s.blind, 4),
                         "items": judgement.items}} for s in judgement.scores]


def _digits_rows(args, model) -> list[dict]:
    """The digits judge on --data's MNIST IDX files: each measure with real digits' and the blind guess's."""
    from .real_images import _mnist_folder

    folder = _mnist_folder(args.data or "")
    if folder is None:
        raise ValueError("digits needs --data pointing at a folder of MNIST IDX files (t10k at least)")
    j = model.judge_digits(folder, n=min(args.num_samples, 2000), seed=args.seed)
    common = {"items": j.items, "classifier": j.source}
    return [{"metric": "digits/reconstruction_accuracy", "value": j.reconstruction,
             "details": {"unit": "%", "real": round(j.classifier_accuracy, 3), "blind": round(j.reconstruction_blind, 3), **common}},
            {"metric": "digits/generation_balance", "value": j.balance,
             "details": {"unit": "points off 10%", "real": round(j.balance_real, 3), "shares": j.class_shares, **common}},
            {"metric": "digits/frechet", "value": j.frechet,
             "details": {"space": "judge classifier features (not Inception FID)", "real": round(j.frechet_real, 4),
                         "blind": round(j.frechet_blind, 4), **common}}]


def cmd_eval(args) -> int:
    import torch

    from ..infra.checkpoints import locate_checkpoint
    from .metrics import METRICS, EvalOptions, LocalRunner
    from .sampling import open_model

    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = parse_metrics(args.metric)
    sampling = tuple(s.strip() for s in args.ppl_sampling.split(",") if s.strip())
    for s in sampling:
        if s not in ("full", "end"):
            raise ValueError(f"--ppl-sampling: {s!r} is not 'full' or 'end'")
    if min(args.num_samples, args.num_real, args.batch) < 1:
        raise ValueError("--num-samples, --num-real and --batch must be positive")
    args.checkpoint = locate_checkpoint(args.checkpoint, "alae-ray eval: --checkpoint")
    model = open_model(args.checkpoint, level=args.level, ema=not args.no_ema, device=args.device)
    opts = EvalOptions(data=args.data, split=args.split, num_samples=args.num_samples, num_real=args.num_real,
                       batch=args.batch, seed=args.seed, psi=args.psi, eps=args.eps, ppl_sampling=sampling,
                       crop=args.crop, cache_dir=None if args.cache_dir == "none" else args.cache_dir)
    feature_metrics = [m for m in metrics if m in METRICS]
    runner = None
    if feature_metrics and args.ray:
        from ..infra.ray_session import start_ray
        from ..metrics.networks import resolve_weight_file
        from .distributed import RayRunner

        needs_fid = any(m.startswith("fid") for m in feature_metrics)
        needs_lpips = any(m.startswith(("ppl", "lpips")) for m in feature_metrics)
        weights = {}
        if needs_fid:
            weights["inception"] = resolve_weight_file("inception", args.inception_weights)
        if needs_lpips:
            weights["vgg"] = resolve_weight_file("vgg", args.vgg_weights)
            weights["lpips"] = resolve_weight_file("lpips", args.lpips_weights)
        start_ray("eval")
        runner = RayRunner(model, args.checkpoint, workers=args.workers, ema=not args.no_ema, weights=weights,
                           device=args.device, threads=args.threads or 1)
    elif feature_metrics:
        runner = LocalRunner(model, inception_weights=args.inception_weights, vgg_weights=args.vgg_weights,
                             lpips_weights=args.lpips_weights)
    rows: list[dict] = []
    try:
        for name in metrics:
            t0 = time.perf_counter()
            if name == "mnist_protocol":
                new = _mnist_rows(args, model)
            elif name == "shapes":
                new = _shapes_rows(args, model)
            elif name == "digits":
                new = _digits_rows(args, model)
            else:
                new = [{"metric": r.metric, "value": r.value, "details": r.details} for r in METRICS[name](runner, opts)]
            for r in new:
                r["details"]["seconds"] = round(time.perf_counter() - t0, 1)
            rows.extend(new)
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "level": model.level, "resolution": model.resolution,
                          "ema": not args.no_ema, "results": rows}, indent=2))
    else:
        print(f"checkpoint {args.checkpoint} (level {model.level}, {model.resolution}px, {'EMA' if not args.no_ema else 'raw'})")
        print(format_table(rows))
    return 0
