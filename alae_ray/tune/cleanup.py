"""Releasing the placement groups of Ray Train runs whose trial Tune stopped.

When ASHA stops a trial (or a sweep driver is killed), Tune kills the trial actor and with it the
trial's Train controller, which never gets to remove its worker group's placement group. Train V2
has a detached ``PlacementGroupCleaner`` for this, but it asks the State API, which needs the Ray
dashboard; on a cluster started without one (``include_dashboard=False``) the reserved CPUs/GPUs
stay blocked, and on a small cluster the next trials' data pipelines never get a CPU. The sweep
driver therefore removes such orphans itself: placement groups created by an actor that is dead
(they are not removed with their creator while its job lives), in this job or in a job that is dead
(an interrupted run of the sweep). Groups created by a driver (Tune's own) are left alone.
This reads the GCS placement group table through Ray's private state accessor.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def remove_orphaned_placement_groups() -> int:
    """Remove orphaned detached placement groups (see the module doc); returns how many."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    try:
        table = state._connect_and_get_accessor().get_placement_group_table()
    except Exception as exc:  # private API: never let cleanup break a sweep
        logger.debug("cannot read the placement group table: %s", exc)
        return 0
    for raw in table:
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        creator = pg.creator_actor_id
        if (pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or not creator or set(creator) == {0xFF}
                or not pg.creator_actor_dead):
            continue  # removed already, created by a driver (e.g. Tune's own trial groups), or creator alive
        if pg.creator_job_id.hex() != job and not pg.creator_job_dead:
            continue  # another live job's business
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
        except Exception as exc:
            logger.debug("cannot remove placement group %s: %s", pg.placement_group_id.hex(), exc)
    return removed


def orphan_cleaner(every_s: float = 5.0):
    """A Tune callback that runs ``remove_orphaned_placement_groups`` at most every ``every_s``."""
    from ray.tune import Callback

    class _OrphanCleaner(Callback):
        def __init__(self):
            self.last = 0.0

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last >= every_s:
                self.last = time.monotonic()
                remove_orphaned_placement_groups()

    return _OrphanCleaner()
