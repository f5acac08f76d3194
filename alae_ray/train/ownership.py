"""What makes a run that run, and which process writes it.

A run directory (``STORAGE/NAME``, local or ``s3://``) holds ``run.json``: the resolved config (its
name aside), the options that change what is trained on (flips, the shuffle window) and the content
digest of the dataset, with the preset and overrides that gave them, for people. Re-running the name
with another definition is refused, naming the first difference, unless the user asks to continue
with changes; those are then appended to the record, so the run says what it was at every point.

``.lease.json`` names the process writing the run. It is renewed while that process trains and
lapses ``LEASE_S`` after it stops renewing (a crashed driver); on the same host a dead owner's
lease is taken over at once. A second writer is refused while the lease is live. S3 has no
create-if-absent in pyarrow, so a new lease is read back after ``SETTLE_S``: of two writers that
start together, only the one whose lease was written last goes on.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..core.config import ConfigError
from ..data.storage import DatasetError, Location, exists, read_bytes, resolve, write_bytes_atomic
from .spec import RunSpec

DEFINITION_FILE = "run.json"
LEASE_FILE = ".lease.json"
LEASE_S = 120.0  # a lease not renewed for this long is free
RENEW_S = LEASE_S / 4
SETTLE_S = 1.0  # how long a new lease must stand before its writer trusts it


class RunConflict(ConfigError):
    """The run exists with another definition, or another process is writing it."""


def dataset_digest(manifest) -> str:
    """SHA-256 over a dataset's shards (path, rows, content hash): the same for the same images
    wherever the dataset lies and whenever it was prepared."""
    h = hashlib.sha256()
    for s in sorted(manifest.shards, key=lambda s: s.path):
        h.update(f"{s.path}|{s.rows}|{s.sha256}\n".encode())
    return h.hexdigest()


@dataclass
class RunDefinition:
    """What a run trains: compared on every start; ``preset``, ``overrides`` and ``data`` (the URI)
    are kept for people, not compared (the same content may come from another path)."""

    config: dict
    data_digest: str
    flip: bool
    shuffle_buffer: int
    streams: int | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    data: str | None = None

    @classmethod
    def of(cls, spec: RunSpec) -> "RunDefinition":
        config = {k: v for k, v in spec.config.to_dict().items() if k != "name"}  # the name is the run's, not its content
        return cls(json.loads(json.dumps(config)), spec.data_digest, spec.flip, spec.shuffle_buffer, spec.streams,
                   spec.preset, list(spec.overrides), spec.data)

    def compared(self) -> dict:
        return {"config": self.config, "data_digest": self.data_digest, "flip": self.flip,
                "shuffle_buffer": self.shuffle_buffer, "streams": self.streams}

    def to_dict(self) -> dict:
        return {**self.compared(), "preset": self.preset, "overrides": self.overrides, "data": self.data}


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: A before, B now`` for every leaf that differs, in key order (config tables dotted)."""
    out = []
    for k in sorted(set(before) | set(now), key=str):
        a, b, key = before.get(k, "<unset>"), now.get(k, "<unset>"), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{key}.")
        elif a != b:
            out.append(f"{_label(key)}: {a} before, {b} now")
    return out


def _label(key: str) -> str:
    key = key.removeprefix("config.")
    return {"data_digest": "the dataset's content (digest)", "flip": "flips (--no-flip)",
            "shuffle_buffer": "the shuffle window", "streams": "the data streams (--data-streams)"}.get(key, key)


def _read_record(run: Location) -> dict | None:
    if not exists(run, DEFINITION_FILE):
        return None
    try:
        record = json.loads(read_bytes(run, DEFINITION_FILE))
        record["definition"]["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunConflict(f"run {run.uri}: unreadable {DEFINITION_FILE} ({exc}); move it away to start the run "
                          "over, or use another --name") from None
    return record


def _differences(run_uri: str, record: dict | None, definition: RunDefinition, allow_changes: bool) -> list[str]:
    if record is None:
        return []
    before = {k: record["definition"].get(k, "<unset>") for k in definition.compared()}
    diff = differences(before, definition.compared())
    if diff and not allow_changes:
        first = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise RunConflict(f"run {run_uri} was started with another definition: {first}{more}; use another "
                          "--name for a new run, or --allow-changes to continue this one with the changes")
    return diff


def check_definition(run_uri: str, definition: RunDefinition, allow_changes: bool = False) -> list[str]:
    """The differences between the run's recorded definition and ``definition`` ([] for a new run or
    the same one); RunConflict naming the first unless ``allow_changes``."""
    return _differences(run_uri, _read_record(resolve(run_uri)), definition, allow_changes)


def record_definition(run_uri: str, definition: RunDefinition, allow_changes: bool = False) -> list[str]:
    """Check, then write ``run.json`` (atomically): created for a new run, a change appended when
    continued with changes; returns the differences."""
    run = resolve(run_uri)
    record = _read_record(run)
    diff = _differences(run_uri, record, definition, allow_changes)
    now = _now()
    if record is None:
        record = {"created": now, "definition": definition.to_dict(), "changes": []}
    elif diff:
        record["changes"].append({"at": now, "differences": diff, "before": record["definition"]})
        record["definition"] = definition.to_dict()
    else:
        return []
    write_bytes_atomic(run, DEFINITION_FILE, json.dumps(record, indent=1, sort_keys=True).encode())
    return diff


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLease:
    """Hold ``.lease.json`` in a run directory while writing it (a context manager)."""

    def __init__(self, run_uri: str, what: str = "alae-ray train"):
        self.run_uri, self.what = run_uri, what
        self.me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "command": what,
                   "since": _now()}
        self._done = threading.Event()
        self._renewer: threading.Thread | None = None

    def _read(self, run: Location) -> dict | None:
        try:
            with run.fs.open_input_stream(run.join(LEASE_FILE)) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:  # not a lease this code wrote (those are whole: renamed or one PUT): ignore it
            return None

    def _write(self, run: Location) -> None:
        write_bytes_atomic(run, LEASE_FILE, json.dumps({**self.me, "expires": time.time() + LEASE_S}).encode())

    def _refusal(self, held: dict) -> RunConflict:
        left = max(0, int(held.get("expires", 0) - time.time()))
        return RunConflict(f"run {self.run_uri} is being written by another process ({held.get('command', '?')}, "
                           f"pid {held.get('pid')} on {held.get('host')}, since {held.get('since')}); stop that one, "
                           f"or use another --name (its lease lapses {left} s after it stops renewing it)")

    def acquire(self) -> None:
        run = resolve(self.run_uri)
        held = self._read(run)
        if held and held.get("owner") != self.me["owner"] and held.get("expires", 0) > time.time():
            same_host = held.get("host") == self.me["host"]
            if not (same_host and not _alive(int(held.get("pid", -1)))):
                raise self._refusal(held)
        self._write(run)
        time.sleep(SETTLE_S)
        held = self._read(run)
        if not held or held.get("owner") != self.me["owner"]:
            raise self._refusal(held or {})
        self._renewer = threading.Thread(target=self._renew, args=(run,), name="run-lease", daemon=True)
        self._renewer.start()

    def _renew(self, run: Location) -> None:
        while not self._done.wait(RENEW_S):
            try:
                held = self._read(run)
                if held and held.get("owner") != self.me["owner"]:
                    print(f"{self.what}: warning: run {self.run_uri} was taken over by pid {held.get('pid')} on "
                          f"{held.get('host')} (this process did not renew its lease in time); two writers "
                          "now share it", file=sys.stderr, flush=True)
                    return
                self._write(run)
            except (DatasetError, OSError) as exc:  # the next renewal tries again; the lease has slack
                print(f"{self.what}: warning: could not renew the lease on {self.run_uri}: {exc}",
                      file=sys.stderr, flush=True)

    def release(self) -> None:
        self._done.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        with contextlib.suppress(DatasetError, OSError):
            run = resolve(self.run_uri)
            held = self._read(run)
            if held and held.get("owner") == self.me["owner"]:
                run.fs.delete_file(run.join(LEASE_FILE))

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
