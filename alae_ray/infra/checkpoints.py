"""Finding and checking a checkpoint (local path, ``file://`` or ``s3://``) without loading its
tensors: what every command that takes ``--checkpoint`` (train, eval, serve, tune, the API) shares."""

from __future__ import annotations

import json
import sys

from ..core.checkpoint import CONFIG_FILE, PROGRESS_FILE, STATE_FILE, CheckpointError
from ..core.config import Config, ConfigError, from_dict


def checkpoint_info(uri: str) -> tuple[Config, dict]:
    """(config, progress) of the checkpoint directory at ``uri``; CheckpointError naming the URI if it
    is missing or incomplete."""
    import pyarrow.fs as pafs

    from ..data.storage import DatasetError, resolve

    try:
        loc = resolve(uri)
        infos = loc.fs.get_file_info([loc.join(n) for n in (STATE_FILE, CONFIG_FILE, PROGRESS_FILE)])
    except (DatasetError, OSError) as exc:
        raise CheckpointError(f"checkpoint {uri!r}: cannot access it ({exc})") from None
    missing = [i.base_name for i in infos if i.type != pafs.FileType.File]
    if len(missing) == 3 and loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        raise CheckpointError(f"checkpoint {uri!r} does not exist (no {STATE_FILE}, {CONFIG_FILE}, {PROGRESS_FILE})")
    if missing:
        raise CheckpointError(f"checkpoint {uri!r} is incomplete: {', '.join(missing)} missing")

    def read(name: str) -> dict:
        with loc.fs.open_input_stream(loc.join(name)) as f:
            return json.loads(f.read())

    try:
        cfg = from_dict(read(CONFIG_FILE))
        progress = read(PROGRESS_FILE)
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {uri!r}: unreadable {CONFIG_FILE}/{PROGRESS_FILE}: {exc}") from None
    if "images_seen" not in progress:
        raise CheckpointError(f"checkpoint {uri!r}: {PROGRESS_FILE} has no images_seen")
    return cfg, progress


def run_checkpoints(uri: str) -> list[str]:
    """The complete checkpoints directly inside a run directory (Ray Train's ``checkpoint_<timestamp>``
    folders), newest (most images seen) first, as URIs in ``uri``'s form; [] when it holds none or is
    itself a checkpoint. On S3 that is two listings and one small read per checkpoint, no download (a
    run directory holds several checkpoints of up to a GB each)."""
    import pyarrow.fs as pafs

    from ..data.storage import DatasetError, resolve

    needed = {STATE_FILE, CONFIG_FILE, PROGRESS_FILE}
    found = []
    try:
        loc = resolve(uri.rstrip("/") or uri)

        def files(path: str) -> set[str]:
            return {e.base_name for e in loc.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                    if e.type == pafs.FileType.File}

        if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory or needed <= files(loc.path):
            return []  # missing, a file, or a checkpoint itself
        for d in loc.fs.get_file_info(pafs.FileSelector(loc.path)):
            if d.type != pafs.FileType.Directory or d.base_name.startswith(".") or not needed <= files(d.path):
                continue  # not a checkpoint, or one still being written or uploaded
            with loc.fs.open_input_stream(f"{d.path}/{PROGRESS_FILE}") as f:
                try:
                    found.append((int(json.loads(f.read()).get("images_seen", -1)), d.base_name))
                except (ValueError, TypeError, AttributeError):
                    continue  # unreadable progress: not one to pick
    except (DatasetError, OSError) as exc:
        raise CheckpointError(f"checkpoint {uri!r}: cannot list it ({exc})".replace("\n", " ")) from None
    base = (uri[len("file://"):] if uri.startswith("file://") else uri).rstrip("/")
    return [f"{base}/{name}" for _, name in sorted(found, reverse=True)]


def locate_checkpoint(uri: str, said_by: str | None = None) -> str:
    """``uri`` if it is a checkpoint, else the newest complete checkpoint directly inside it (a run
    directory, see ``run_checkpoints``), local, ``file://`` or ``s3://``; ``uri`` itself when it holds
    none, for the loader to say what is missing. ``said_by`` (e.g. ``"alae-ray serve: --checkpoint"``):
    tell the user on stderr which checkpoint was taken."""
    found = run_checkpoints(uri)
    if not found:
        return uri
    if said_by:
        print(f"{said_by} {uri}: using its newest checkpoint {found[0]}", file=sys.stderr, flush=True)
    return found[0]
