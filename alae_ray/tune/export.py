"""What a sweep leaves behind: a results table (CSV and Markdown) and the best config as a preset.

Files in the experiment folder ``<storage>/<name>/``:

* ``results.csv`` / ``results.md`` — one row per trial: status, sampled values, kimg trained, the
  last and the best objective, where its latest checkpoint is;
* ``best_preset.yaml`` — the best trial's full config, loadable by ``load_config(path)`` and
  trainable by ``alae-ray train --preset path``;
* ``best.json`` — the best trial's id, values, objective and checkpoint;
* population sweeps: ``best_schedule.json`` / ``.md`` — the values that made the best member's
  networks, segment by segment (the donors' segments before an exploit included), and
  ``population.png`` — every member's objective over kimg.

Statuses: ``completed`` (trained ``trial.kimg``), ``stopped`` (stopped early by the scheduler),
``diverged`` (non-finite losses), ``error`` (the trial raised). The best trial is the completed one
with the lowest last objective; if no trial completed, the lowest among stopped ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import yaml

from ..train.objective import DIVERGED

STATUS_ORDER = {"completed": 0, "stopped": 1, "diverged": 2, "error": 3}


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _trial_id_from_path(path: str) -> str:
    """Tune's trial folders are named ``<trainable>_<experiment id>_<index>_<values>_<date>``."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    found = re.search(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)", name)
    return found.group(1) if found else name


def trial_rows(results, plan) -> list[dict]:
    """Rows from a ``ResultGrid`` (or any iterable of Tune ``Result``), best first."""
    keys = [p.key for p in plan.sweep.space]
    want = plan.sweep.trial.kimg
    rows = []
    for r in results:
        m = dict(r.metrics or {})
        config = dict(r.config or {})
        df = r.metrics_dataframe
        objs = [] if df is None or "objective" not in df else [_num(v) for v in df["objective"]]
        objs = [v for v in objs if v is not None]
        trial_kimg = _num(m.get("trial_kimg")) or 0.0
        if r.error is not None:
            status = "error"
        elif m.get("diverged") or not m.get("objective_finite", True):
            status = "diverged"
        elif trial_kimg >= want - 1e-6:
            status = "completed"
        else:
            status = "stopped"
        objective = None if status == "diverged" else _num(m.get("objective"))
        rows.append({
            "trial_id": m.get("trial_id") or _trial_id_from_path(str(r.path)),
            "status": status, **{k: config.get(k) for k in keys},
            "trial_kimg": round(trial_kimg, 6), "kimg": _num(m.get("kimg")), "resolution": m.get("resolution"),
            "objective": objective,
            "best_objective": min((v for v in objs if v != DIVERGED), default=None),
            "reports": len(objs),
            "checkpoint": m.get("checkpoint_path") or (r.checkpoint.path if r.checkpoint is not None else None),
            "error": (str(r.error).splitlines() or [""])[0][:200] if r.error is not None else m.get("error"),
        })
    rows.sort(key=lambda row: (STATUS_ORDER[row["status"]],
                               row["objective"] if row["objective"] is not None else math.inf))
    return rows


def best_row(rows: list[dict]) -> dict | None:
    for status in ("completed", "stopped"):
        ok = [r for r in rows if r["status"] == status and r["objective"] is not None]
        if ok:
            return min(ok, key=lambda r: r["objective"])
    return None


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("|", "\\|")


def to_markdown(rows: list[dict], title: str = "") -> str:
    if not rows:
        return f"{title}\n\n(no trials)\n" if title else "(no trials)\n"
    cols = [c for c in rows[0] if c not in ("checkpoint", "error")] + ["error"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_preset_text(plan, row: dict) -> str:
    """The best trial's full config as a preset YAML (with a comment saying where it came from)."""
    params = {p.key: row[p.key] for p in plan.sweep.space}
    cfg = plan.config(params, name=f"{plan.sweep.name}_best")
    header = [f"# Best trial {row['trial_id']} of sweep {plan.sweep.name!r} ({plan.sweep.path})",
              f"# objective ({plan.sweep.objective.kind}) {row['objective']:.6g} after {row['trial_kimg']:g} kimg",
              f"# tuned: {json.dumps(params)}"]
    if plan.sweep.start is not None:
        header.append(f"# per-resolution sweep from {plan.sweep.start.checkpoint} at {plan.sweep.start.resolution}px; "
                      f"the best trial's checkpoint: {row.get('checkpoint')}")
    return "\n".join(header) + "\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --- population sweeps -----------------------------------------------------------------------------


def population_schedule(results, trial_id: str) -> list[dict]:
    """The schedule carried in ``trial_id``'s latest checkpoint: the values its networks were trained
    with, segment by segment, whichever members trained them."""
    from .trainable import SCHEDULE_FILE

    for r in results:
        if r.checkpoint is not None and (r.metrics or {}).get("trial_id") == trial_id:
            with r.checkpoint.as_directory() as d:
                return json.loads((Path(d) / SCHEDULE_FILE).read_text())
    return []


def schedule_markdown(schedule: list[dict], plan) -> str:
    keys = [p.key for p in plan.sweep.space]
    lines = [f"# The best member's schedule (sweep {plan.sweep.name})", "",
             "| from kimg | to kimg | trained by | " + " | ".join(keys) + " | objective at the end |",
             "|" + "---|" * (len(keys) + 4)]
    for seg in schedule:
        lines.append(f"| {seg['from_kimg']:g} | {seg['to_kimg']:g} | {seg['trial_id']} | "
                     + " | ".join(_cell(seg["values"].get(k)) for k in keys) + f" | {_cell(_num(seg['objective']))} |")
    return "\n".join(lines) + "\n"


def population_plot(results, title: str) -> bytes:
    """PNG: every member's objective over kimg (a jump back up after an exploit is the copy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for r in results:
        df = r.metrics_dataframe
        if df is None or "objective" not in df or "kimg" not in df:
            continue
        rows = [(k, o) for k, o in zip(df["kimg"], df["objective"]) if _num(o) is not None and o != DIVERGED]
        if rows:
            ax.plot(*zip(*rows), marker="o", label=str((r.metrics or {}).get("trial_id", "")))
    ax.set_xlabel("kimg")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title(f"population of {title}")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
