"""Events of every type, for round trips and schema checks."""

from __future__ import annotations

from datetime import UTC, datetime

import lwfm_bus as lb
from lwfm_bus import JobState


def sample_events(site: str = "hpc1") -> list[lb.Event]:
    src = f"/sites/{site}/test"
    return [
        lb.make_event(
            lb.JobStatus(job_id="j1", site=site, state=JobState.RUNNING, workflow_id="wf1", native_id="123"),
            source=src,
        ),
        lb.make_event(
            lb.DataArrival(
                data_id="d1",
                site=site,
                location="/scratch/out.h5",
                metadata={"kind": "mesh", "step": 3, "ok": True, "x": 1.5, "tags": ["a", "b"]},
                job_id="j1",
                workflow_id="wf1",
                size=10,
                checksum="sha256:" + "ab" * 32,
                direction="put",
                origin_site="laptop",
                origin="/home/u/out.h5",
            ),
            source=src,
        ),
        lb.make_event(
            lb.TriggerRegistered(
                trigger_id="t1",
                site=site,
                definition=lb.JobTrigger(
                    trigger_id="t1",
                    upstream=lb.Upstream(job_id="j1"),
                    downstream=lb.Downstream(job=lb.JobDefn.of(["echo", "B"])),
                ),
            ),
            source=src,
        ),
        lb.make_event(
            lb.TriggerFired(
                trigger_id="t1", site=site, firing_key="t1:j1", downstream_job_id="j2", parent_job_ids=("j1",)
            ),
            source=src,
        ),
        lb.make_event(lb.TriggerExpired(trigger_id="t2", site=site, reason="window passed"), source=src),
        lb.make_event(lb.TriggerFailed(trigger_id="t3", site=site, reason="site down", attempts=5), source=src),
        lb.make_event(lb.TriggerCancelled(trigger_id="t4", site=site), source=src),
        lb.make_event(
            lb.TriggerDeadline(trigger_id="t5", site=site, firing_key="t5", deadline=datetime(2026, 1, 1, tzinfo=UTC)),
            source=src,
        ),
        lb.make_event(
            lb.TriggerTick(
                trigger_id="t6", site=site, firing_key="t6/20260101T000000Z", tick=datetime(2026, 1, 1, tzinfo=UTC)
            ),
            source=src,
        ),
        lb.make_event(lb.SiteHeartbeat(site=site, adapter="local", interval_s=5), source=src),
        lb.make_event(lb.WorkflowDefined(workflow_id="wf1", site=site, name="demo", properties={"k": 1}), source=src),
        lb.make_event(
            lb.WorkspaceChanged(
                workspace="ws1",
                site=site,
                op="add",
                logical="in/mesh.vtk",
                location=lb.WorkspaceLocation(site=site, path="/scratch/ws1/in/mesh.vtk"),
            ),
            source=src,
        ),
    ]
