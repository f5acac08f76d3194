"""Every command's Ray: ``start_ray`` connects to the cluster in ``RAY_ADDRESS`` or starts a local
one; ``preflight``/``require`` compare what a command will ask Ray for with the cluster before
anything is scheduled, so what cannot fit is refused (or, on a cluster that can grow, warned about)
instead of waiting for ever."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import ray


def start_ray(command: str, *, verbose: bool = False, runtime_env: dict | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS``, or start a local Ray, unless connected already.

    A local Ray runs its dashboard on loopback: Ray's state API lives there, and Ray Train's own
    placement-group cleaner asks it whether a run's controller is alive (without it, a trial that ASHA
    stops keeps its workers' CPUs). Ray's own log lines reach the console only with ``verbose``."""
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "ray.train", "ray.data", "ray.tune", "ray.serve"):  # Serve sets its own at import
        logging.getLogger(name).setLevel(level)
    # The token notice repeats at every start; the docs say how token authentication works.
    logging.getLogger("ray._private.authentication").setLevel(level if verbose else logging.ERROR)
    address = os.environ.get("RAY_ADDRESS")
    local = {}
    if not address:
        # A run starts about ten light processes (Train's controller, its workers, Ray Data's tasks, the
        # progress board); the raylet's default of one start at a time per CPU warns on every run here.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(16, os.cpu_count() or 1)))
        # Ray 2.60's metrics exporter thread can segfault a worker as it starts (seen once in CI: it killed
        # Train's controller before it ran); a local Ray has no Prometheus to read the metrics anyway.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        local = {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
    info = ray.init(address=address, log_to_driver=verbose, logging_level=level, runtime_env=runtime_env, **local)
    if not address:
        total = ray.cluster_resources()
        where = f"; dashboard at http://{info.dashboard_url}" if info.dashboard_url else ""
        print(f"alae-ray {command}: started a local Ray ({total.get('CPU', 0):g} CPUs, "
              f"{total.get('GPU', 0):g} GPUs){where}", file=sys.stderr, flush=True)


class PreflightError(ValueError):
    """The cluster cannot hold what the run needs; the message names the numbers and the option to change."""


@dataclass(frozen=True)
class Needs:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    data_cpus: float = 1.0  # Ray Data's read and decode tasks need a CPU of their own

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.data_cpus

    def describe(self) -> str:
        gpus = f" and {self.workers * self.gpus_per_worker:g} GPU(s)" if self.gpus_per_worker else ""
        return (f"{self.workers} worker(s) x {self.cpus_per_worker:g} CPU + {self.data_cpus:g} CPU for Ray Data's "
                f"reading = {self.cpus:g} CPUs{gpus}")


def cluster_can_grow() -> bool:
    """False when this process started the Ray node it uses (a local Ray: what it has is all it will
    have); True when connected to a cluster, which may autoscale."""
    return getattr(ray._private.worker, "_global_node", None) is None


def cluster_summary() -> str:
    total, free = ray.cluster_resources(), ray.available_resources()
    parts = [f"{free.get(r, 0):g} of {total.get(r, 0):g} {r}s free" for r in ("CPU", "GPU") if total.get(r)]
    return ", ".join(parts) or "no CPUs or GPUs"


def require(cpus: float, gpus: float, what: str, hint: str, *, strict: bool) -> str | None:
    """PreflightError when the cluster's total resources cannot hold ``cpus`` and ``gpus`` (``strict``:
    a cluster that cannot grow, e.g. the local Ray this process started); otherwise a warning or None."""
    total = ray.cluster_resources()
    short = [f"{need:g} {name}s but the cluster has {total.get(name, 0.0):g}"
             for name, need in (("CPU", cpus), ("GPU", gpus)) if need > total.get(name, 0.0) + 1e-9]
    if not short:
        return None
    message = f"{what}: {'; '.join(short)}; {hint}"
    if strict:
        raise PreflightError(message)
    return message + ". Waiting for the cluster to scale up."


def preflight(needs: Needs, *, strict: bool, fewest: int | None = None) -> str | None:
    """``require`` for a training run, with the number of workers that would fit as the hint
    (``fewest``: an elastic run's, whose most workers ``needs`` holds; the hint is then a range)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    fit = int((cpus - needs.data_cpus) // needs.cpus_per_worker) if needs.cpus_per_worker else needs.workers
    if needs.gpus_per_worker:
        fit = min(fit, int(gpus // needs.gpus_per_worker))
    fits = f"{fewest}-{fit}" if fewest and fit > fewest else str(fit)
    hint = (f"use --workers {fits}" if fit >= 1 else "use a larger cluster") + " (or lower --cpus-per-worker)"
    warning = require(needs.cpus, needs.workers * needs.gpus_per_worker, f"the run needs {needs.describe()}", hint,
                      strict=strict)
    return warning and warning.replace("scale up.", "scale up (bounded by --stall-timeout).")


def local_paths_warning(paths: dict[str, str | None], other_nodes: set[str]) -> str | None:
    """A warning when local paths (not ``s3://``) are used on a cluster with nodes on other machines
    (their IPs: ``other_nodes``): workers there read the data and write checkpoints on their own disks
    unless the path is shared."""
    local = [f"{flag} {path}" for flag, path in paths.items() if path and "://" not in path]
    others = sorted(other_nodes)
    if not (local and others):
        return None
    return (f"{', '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'}, and the cluster has "
            f"nodes on other machines ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): every node must "
            f"see {'it' if len(local) == 1 else 'them'} at the same place (a shared filesystem), or use s3://")


def other_node_ips() -> set[str]:
    """The IPs of the cluster's live nodes on machines other than this one."""
    return {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {ray.util.get_node_ip_address()}
