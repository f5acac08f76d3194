"""Run artifacts on S3 (moto's real server on loopback): incremental mirroring, a log that survives restarts."""

from __future__ import annotations

import json
import os


def test_upload_sends_only_new_or_changed_files_and_the_log_survives_a_restart(tmp_path, s3_bucket):
    from alae_ray.data.storage import read_bytes, resolve
    from alae_ray.train.artifacts import MetricsLog, restore_log, upload

    local, uri = tmp_path / "node-a", f"{s3_bucket}/runs/t/artifacts"
    log = MetricsLog(local)
    log.write({"kimg": 0.5, "loss_d": 1.0})
    (local / "generations_00000.50kimg.png").write_bytes(b"png-1")
    first = upload(local, uri)
    assert "metrics.jsonl" in first and "generations_00000.50kimg.png" in first
    log.write({"kimg": 1.0, "loss_d": 0.9})
    (local / "generations_00001.00kimg.png").write_bytes(b"png-2")
    second = upload(local, uri)
    # the first grid is not sent again; the grown log and the new grid are
    assert "generations_00000.50kimg.png" not in second
    assert {"metrics.jsonl", "generations_00001.00kimg.png"} <= set(second)
    assert upload(local, uri) == []  # nothing changed: nothing sent
    (local / "workers.json").write_text('{"node": "a"}')
    assert upload(local, uri) == ["workers.json"]
    (local / "workers.json").write_text('{"node": "b"}')  # rewritten at the same size (a restart, same node),
    t = (local / "workers.json").stat().st_mtime_ns + 10**9  # a second later (as restarts are)
    os.utime(local / "workers.json", ns=(t, t))
    assert upload(local, uri) == ["workers.json"]
    assert read_bytes(resolve(uri), "workers.json") == b'{"node": "b"}'
    log.close()

    # the worker group restarts on another node: its log continues the mirrored one
    other = tmp_path / "node-b"
    assert restore_log(other, uri)
    log = MetricsLog(other)
    log.write({"kimg": 1.5, "loss_d": 0.8})
    log.close()
    upload(other, uri)
    rows = [json.loads(line) for line in read_bytes(resolve(uri), "metrics.jsonl").decode().splitlines()]
    assert [r["kimg"] for r in rows] == [0.5, 1.0, 1.5]
    assert not restore_log(other, uri)  # a node that has its own log keeps it


def test_tensorboard_shows_each_row_at_its_own_tick_time(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alae_ray.train.artifacts import MetricsLog

    log = MetricsLog(tmp_path)  # wall time as metrics.jsonl says it, not when the row reached the log
    log.write({"kimg": 0.5, "loss_d": 1.0, "time": 1_700_000_000.0})
    log.write({"kimg": 1.0, "loss_d": 0.9, "time": 1_700_000_060.0})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["loss_d"]  # the time is the axis, not a curve
    assert [(e.step, e.wall_time) for e in events.Scalars("loss_d")] == [(500, 1_700_000_000.0), (1000, 1_700_000_060.0)]
