"""The console of ``alae-ray tune``: one line per trial event, as ``alae-ray train`` prints one per
tick, in place of Tune's status tables and Ray's own log lines (those come back with ``--verbose``).
"""

from __future__ import annotations

import contextlib
import os
import sys

from ray.tune import Callback

OBJECTIVE_KEYS = ("objective", "obj_rec", "obj_fid", "obj_lpips")


@contextlib.contextmanager
def ray_output(verbose: bool):
    """Around ``Tuner.fit``: Tune's new console output prints its experiment header and paths at
    every verbosity; its legacy output at verbosity 0 prints nothing. Ray 2.60 reads the switch when
    the fit starts, in this process."""
    key, before = "RAY_AIR_NEW_OUTPUT", os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:
        os.environ[key] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class SweepConsole(Callback):
    """Prints, on the driver: a trial's start with its values, each report (kimg, objective), its end
    (completed, stopped early by the scheduler, diverged) and its failures (with what Tune does next)."""

    def __init__(self, keys: list[str], trial_kimg: float):
        self.keys, self.trial_kimg = keys, trial_kimg  # plain values: Tune pickles its callbacks
        self.last: dict[str, dict] = {}

    def _say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _values(self, trial) -> str:
        config = trial.config or {}
        return " ".join(f"{k}={_number(config[k])}" for k in self.keys if k in config)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started: {self._values(trial)}")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} continues from its checkpoint: {self._values(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        objective = "  ".join(f"{k}={_number(result[k])}" for k in OBJECTIVE_KEYS if k in result)
        where = f"{result['resolution']}px " if "resolution" in result else ""
        self._say(f"trial {trial.trial_id}  kimg {result.get('trial_kimg', 0):7.3f} of {self.trial_kimg:g}  "
                  f"{where}{objective}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self.last.get(trial.trial_id, trial.last_result or {})
        kimg = float(last.get("trial_kimg", 0.0))
        if last.get("diverged"):
            how = f"diverged at {kimg:g} kimg ({last.get('error', 'a non-finite loss')})"
        elif kimg < self.trial_kimg - 1e-6:
            how = f"stopped early by the scheduler at {kimg:g} kimg (objective {_number(last.get('objective'))})"
        else:
            how = f"completed {kimg:g} kimg (objective {_number(last.get('objective'))})"
        self._say(f"trial {trial.trial_id} {how}")

    def _failed(self, trial, then: str) -> None:
        try:
            text = str(trial.get_error() or "")
        except OSError:  # the error file is on storage that is gone: say so without it
            text = ""
        last = next((l.strip() for l in reversed(text.splitlines()) if l.strip()), "see the trial's error.txt")
        self._say(f"trial {trial.trial_id} failed: {last[:300]}; {then}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._failed(trial, "retrying it from its checkpoint (trial.retries)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trial, "no retries left (trial.retries)")
