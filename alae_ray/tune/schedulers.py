"""Tune's PBT and PB2, made to never leave every member waiting.

Synch mode runs only the members behind its next perturbation point. After a resume (the
scheduler's bookkeeping starts afresh while members continue from their checkpoints), or when a
member ends or fails off step, none may be, and every member would wait for ever. Then the
furthest-behind waiting member runs.

A member's last report (``final_segment``) is no perturbation point: it ends the member, so an
exploit there would replace the worst member's own result with a copy of the best, trained with
values nobody trained.
"""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2


class _Live:
    def on_trial_result(self, tune_controller, trial, result):
        if result.get("final_segment"):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def choose_trial_to_run(self, tune_controller):
        trial = super().choose_trial_to_run(tune_controller)
        trials = tune_controller.get_trials()
        if trial is None and self._synch and not any(t.status == Trial.RUNNING for t in trials):
            waiting = [t for t in trials if t.status in (Trial.PENDING, Trial.PAUSED)]
            trial = min(waiting, key=lambda t: self._trial_state[t].last_train_time, default=None)
        return trial


class LivePBT(_Live, PopulationBasedTraining):
    pass


class LivePB2(_Live, PB2):
    pass
