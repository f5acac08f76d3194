"""Nothing waits for ever: a preflight of what a run needs, and a bound on how long it may stall.

``start_ray`` connects every command to its Ray (the cluster in ``RAY_ADDRESS``, else a local one).

``preflight`` compares what a run will ask Ray for (workers x CPUs/GPUs, one CPU for Ray Data's
read tasks) with the cluster, before anything is scheduled. ``fit_watched`` runs a trainer while
the workers report what they are doing to a small ``ProgressBoard`` actor; when nothing has happened
for ``stall_s`` seconds it gives up with a ``StallError`` that says what the run was waiting for and
what the cluster has free.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


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


class StallError(RuntimeError):
    """A run made no progress for too long; the message says what it was waiting for."""


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


def preflight(needs: Needs, *, strict: bool) -> str | None:
    """``require`` for a training run, with the number of workers that would fit as the hint."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    fit = int((cpus - needs.data_cpus) // needs.cpus_per_worker) if needs.cpus_per_worker else needs.workers
    if needs.gpus_per_worker:
        fit = min(fit, int(gpus // needs.gpus_per_worker))
    hint = (f"use --workers {fit}" if fit >= 1 else "use a larger cluster") + " (or lower --cpus-per-worker)"
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


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where workers say what they are doing; the driver reads it to tell progress from a stall."""

    def __init__(self):
        self.last = time.time()
        self.what = "starting the Ray Train worker group (no worker has started yet)"
        self.failed: str | None = None
        self.said: list[str] = []  # console lines for the driver to print, in order
        self.posted: list[dict] = []  # validation records for rank 0 to log, in order
        self.logged = 0  # how many of them rank 0 has logged

    def beat(self, what: str) -> None:
        self.last, self.what = time.time(), what

    def fail(self, message: str) -> None:
        """A failure that must not be retried (a non-finite loss): the driver raises it after fit."""
        self.failed = message
        self.beat(f"stopped: {message}")

    def say(self, line: str) -> None:
        self.said.append(line)

    def post(self, record: dict) -> None:
        self.posted.append(record)

    def records(self, seen: int = 0) -> list[dict]:
        """The records posted after the first ``seen`` (which rank 0 has logged)."""
        self.logged = max(self.logged, seen)
        return self.posted[seen:]

    def logged_count(self) -> int:
        return self.logged

    def state(self, seen: int = 0) -> tuple[float, str, list[str]]:
        """(seconds since anything happened, the last thing that did, console lines after ``seen``)."""
        return time.time() - self.last, self.what, self.said[seen:]

    def failure(self) -> str | None:
        return self.failed


def new_board() -> tuple[object, str]:
    name = f"alae-ray-progress-{uuid.uuid4().hex[:12]}"
    # On the driver's node, like Ray Train's controller: it outlives any worker node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ProgressBoard.options(name=name, scheduling_strategy=here).remote(), name


_boards: dict[str, object] = {}  # this process's handles, by board name
_last_beat: dict[str, tuple[float, str]] = {}  # (when, what) last told, by board name


def _board(name: str | None):
    """This process's handle of the board called ``name``; None without a name or a board."""
    if name and name not in _boards:
        try:
            _boards[name] = ray.get_actor(name)
        except ValueError:  # the run is gone
            return None
    return _boards.get(name) if name else None


def beat(name: str | None, what: str, *, failed: bool = False, say: str | None = None, every_s: float = 5.0) -> None:
    """From a worker: tell the board (fire and forget; a missing board is not an error). ``say``: a
    console line for the driver to print. A plain beat repeating the last one within ``every_s`` is
    skipped, so a worker can beat every iteration."""
    if not name:
        return
    now = time.monotonic()
    when, last = _last_beat.get(name, (-1e9, ""))
    if not (failed or say) and what == last and now - when < every_s:
        return
    board = _board(name)
    if board is None:
        return
    _last_beat[name] = (now, what)
    (board.fail if failed else board.beat).remote(what)
    if say is not None:
        board.say.remote(say)


def post(name: str | None, record: dict) -> None:
    """A validation record for rank 0 to log (fire and forget, like ``beat``)."""
    board = _board(name)
    if board is not None:
        board.post.remote(record)


def records(name: str | None, seen: int, timeout_s: float = 30.0) -> list[dict]:
    """The validation records posted after the first ``seen``; [] when there is no board or it does
    not answer within ``timeout_s`` (the caller asks again at its next tick)."""
    board = _board(name)
    if board is None:
        return []
    try:
        return ray.get(board.records.remote(seen), timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return []


def logged(name: str | None, timeout_s: float = 30.0) -> int:
    """How many validation records an earlier rank 0 of this run logged (0 when unknown)."""
    board = _board(name)
    try:
        return ray.get(board.logged_count.remote(), timeout=timeout_s) if board is not None else 0
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return 0


def fit_watched(trainer, board, stall_s: float, poll_s: float = 1.0, echo=None):
    """``trainer.fit()``, printing the workers' console lines with ``echo`` as they come, and a
    StallError once the board has heard nothing for ``stall_s`` seconds (0: wait as long as it takes).
    On a StallError the fit keeps running in its thread; the caller's exit (or ``ray.shutdown``) ends it."""
    out: dict = {}
    seen = 0

    def poll() -> tuple[float, str] | None:
        """Print the console lines said since the last poll; (idle seconds, what) or None if unreachable."""
        nonlocal seen
        try:
            idle, what, lines = ray.get(board.state.remote(seen), timeout=60)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return None
        seen += len(lines)
        for line in lines:
            if echo is not None:
                echo(line)
        return idle, what

    def target():
        try:
            out["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=target, name="alae-ray-fit", daemon=True)
    thread.start()
    reached = time.monotonic()  # the last time the board answered
    while thread.is_alive():
        thread.join(timeout=poll_s)
        state = poll()
        if state is not None:
            reached = time.monotonic()
            idle, what = state
        else:  # the board is slow or restarting: judge by how long it has been out of reach
            idle, what = time.monotonic() - reached, "the progress board actor (unreachable)"
        if thread.is_alive() and stall_s and idle > stall_s:
            raise StallError(f"no progress for {idle:.0f} s (limit {stall_s:g} s, --stall-timeout); the run was "
                             f"waiting for: {what}; the cluster has {cluster_summary()}")
    poll()  # the last lines said before the fit returned
    if "error" in out:
        raise out["error"]
    return out["result"]
