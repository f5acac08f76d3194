"""Nothing waits for ever: workers tell a small ``ProgressBoard`` actor what they are doing, and
``fit_watched`` runs a trainer until it ends or nothing has happened for ``stall_s`` seconds, then
gives up with a ``StallError`` that says what the run was waiting for and what the cluster has free.
The board also carries the workers' console lines and the validation records (train.validation)."""

from __future__ import annotations

import threading
import time
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .ray_session import cluster_summary


class StallError(RuntimeError):
    """A run made no progress for too long; the message says what it was waiting for."""


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
        self.workers: int | None = None  # the size of the worker group that started last

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

    def started(self, workers: int) -> int | None:
        """A worker group of ``workers`` started; returns the size of the one before it (None: first)."""
        before, self.workers = self.workers, workers
        return before


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


def group_started(name: str | None, workers: int, timeout_s: float = 30.0) -> int | None:
    """Tell the board a worker group of ``workers`` started; the size of the group before it, or None
    (the first, no board, or no answer within ``timeout_s``)."""
    board = _board(name)
    try:
        return ray.get(board.started.remote(workers), timeout=timeout_s) if board is not None else None
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return None


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
