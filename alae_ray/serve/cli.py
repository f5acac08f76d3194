"""``alae-ray serve``: run the Serve application for one checkpoint until Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import signal
import sys
import threading


def precheck(uri: str) -> str:
    """The checkpoint to serve: ``uri``, or its newest checkpoint if it is a run directory (said on
    stderr). Fails before Ray starts when it is missing or incomplete."""
    from ..core.checkpoint import CheckpointError
    from ..infra.checkpoints import checkpoint_info, locate_checkpoint

    if "://" not in uri and not os.path.isdir(uri):
        raise FileNotFoundError(f"checkpoint {uri!r} not found")
    found = locate_checkpoint(uri, "alae-ray serve: --checkpoint")
    try:
        checkpoint_info(found)
    except CheckpointError as exc:
        if found != uri:
            raise
        raise CheckpointError(f"{exc}, and it holds no complete checkpoint_* directory") from None
    return found


def root_message(text: str) -> str:
    """The user-facing line of a replica traceback: the CheckpointError/ValueError it ended with."""
    found = re.findall(r"(?:CheckpointError|ValueError|DatasetError): ([^\n]+)", text)
    return found[-1].strip() if found else text.strip().splitlines()[0] if text.strip() else "unknown error"


def startup_error(app_name: str, exc: BaseException) -> str:
    """Why an application failed to deploy: serve.run's exception only says which deployment failed;
    the replica's own error is in the deployment status."""
    from ray import serve

    try:
        deployments = serve.status().applications[app_name].deployments.values()
    except Exception:  # Serve itself is gone: the exception is all there is
        return root_message(str(exc))
    for d in deployments:
        if d.message and ("Traceback" in d.message or "Error" in d.message):
            return root_message(d.message)
    return root_message(str(exc))


REQUEST_TIMEOUT_S = 120.0  # the proxy answers 408 to a request unanswered this long (as deploy/serve.yaml says)
# The flags of the ServeArgs keys not spelled --key-with-dashes on the command line.
FLAGS = {"batch_wait_timeout_s": "--batch-wait-ms / 1000", "ui": "--no-ui", "lpips": "--no-lpips"}


def serve_args(**values):
    """ServeArgs from the command line's values; a bad one is a ValueError of one line naming its flag."""
    from pydantic import ValidationError

    from .app import ServeArgs

    try:
        return ServeArgs(**values)
    except ValidationError as exc:
        e = exc.errors()[0]
        key = str(e["loc"][0])
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        raise ValueError(f"{flag}: {e['msg'][0].lower()}{e['msg'][1:]} (got {e['input']!r})") from None


def positive_seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _import_attr(path: str):
    """``module:attribute`` (an import path as in deploy/serve.yaml) -> the attribute."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def cmd_serve(args) -> int:
    import ray
    from ray import serve

    from ..infra.ray_session import cluster_can_grow, require, start_ray
    from .app import GATEWAY_CPUS, UI_APP, UI_PATH, build_app

    opts = serve_args(checkpoint=args.checkpoint, device=args.device, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                      max_batch_images=args.max_batch_images, batch_wait_timeout_s=args.batch_wait_ms / 1000.0,
                      max_concurrent_refines=args.max_concurrent_refines, max_queued_requests=args.max_queued_requests,
                      ui=not args.no_ui, lpips=not args.no_lpips)
    checkpoint = precheck(args.checkpoint if args.checkpoint.startswith("s3://") else os.path.abspath(args.checkpoint))
    opts = opts.model_copy(update={"checkpoint": checkpoint})
    start_ray("serve", verbose=args.verbose)
    try:
        # serve.run waits until every replica runs: refuse what cannot be placed instead of waiting
        cpus, gpus = opts.model_replicas * opts.num_cpus + opts.gateway_replicas * GATEWAY_CPUS, opts.num_gpus
        warning = require(cpus, gpus * opts.model_replicas, f"serving needs {opts.model_replicas} model replica(s) x "
                          f"({opts.num_cpus:g} CPU, {opts.num_gpus:g} GPU) + {opts.gateway_replicas} gateway(s) x "
                          f"{GATEWAY_CPUS:g} CPU", "lower --num-cpus or --num-gpus", strict=not cluster_can_grow())
        if warning:
            print(f"alae-ray serve: warning: {warning}", file=sys.stderr, flush=True)
        serve.start(http_options={"host": args.host, "port": args.port, "request_timeout_s": args.request_timeout_s})
        try:
            # the UI is a layer above serve: named by import path, as deploy/serve.yaml names it
            builder = _import_attr(UI_APP) if opts.ui else build_app
            serve.run(builder(opts), name="alae", route_prefix="/")
        except Exception as exc:  # a failed replica start arrives as a RuntimeError with its traceback
            print(f"alae-ray serve: error: the application failed to start: {startup_error('alae', exc)}",
                  file=sys.stderr)
            return 2
        url = f"http://{args.host}:{args.port}"
        print(f"ALAE serving {checkpoint} at {url}/api (docs {url}/api/docs)"
              + ("" if args.no_ui else f", UI {url}{UI_PATH}/"), flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping", flush=True)
        serve.shutdown()
        return 0
    finally:
        ray.shutdown()


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP with a web UI (Ray Serve)",
                       description="Start Ray Serve locally (or on the cluster in RAY_ADDRESS) with the ALAE HTTP "
                                   "API and Gradio UI for one checkpoint; blocks until Ctrl-C. For production use "
                                   "deploy/serve.yaml with `serve deploy`.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its newest "
                   "checkpoint): local path or s3://bucket/prefix")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per model replica (default 0)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per model replica (default 1)")
    p.add_argument("--max-batch-images", "--max-batch-size", type=int, default=16,
                   help="images per model batch, summed over the requests it joins (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default 10)")
    p.add_argument("--max-concurrent-refines", type=int, default=1, help="refinements one model replica runs at "
                   "once; more are refused with 503 (default 1)")
    p.add_argument("--max-queued-requests", type=int, default=64, help="calls each gateway queues for busy model "
                   "replicas; more are refused with 503 (default 64)")
    p.add_argument("--request-timeout-s", type=positive_seconds, default=REQUEST_TIMEOUT_S,
                   help=f"the proxy answers 408 to a request unanswered this long (default {REQUEST_TIMEOUT_S:g})")
    p.add_argument("--no-ui", action="store_true", help="API only, no Gradio UI")
    p.add_argument("--no-lpips", action="store_true", help="refine with the pixel loss only, even where LPIPS's "
                                                          "weights are on the machine")
    p.add_argument("--verbose", action="store_true", help="show replica logs")
    p.set_defaults(func=cmd_serve)
