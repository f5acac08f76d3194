"""Checking a start checkpoint (local path, ``file://`` or ``s3://``) without loading its tensors."""

from __future__ import annotations

import json

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
    if len(missing) == 3:
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
