"""The job state machine and the JSON contract of jobs and nodes (tier 1: no I/O)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import msgspec
import pytest

from mgpu.core.errors import InvalidTransition, MgpuError
from mgpu.core.models import (
    ACTIVE_STATES,
    ENDED_STATES,
    TRANSITIONS,
    EndCause,
    GpuInfo,
    JobSpec,
    JobState,
    NodeInfo,
    SimpleJob,
    advance,
    utc,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T1 = T0 + 60.5

EXPECTED_TRANSITIONS = {
    ("pending", "running"),
    ("pending", "cancelled"),
    ("pending", "failed"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "timeout"),
    ("running", "node_fail"),
    ("running", "pending"),
    ("node_fail", "pending"),
}
ALL_PAIRS = list(itertools.product(JobState, JobState))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if (a.value, b.value) in EXPECTED_TRANSITIONS]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if (a.value, b.value) not in EXPECTED_TRANSITIONS]


def make_job(state: JobState = JobState.PENDING, **kw: object) -> SimpleJob:
    fields: dict[str, object] = {
        "id": 7,
        "name": "train",
        "user": "alice",
        "state": state,
        "gpus": 2,
        "command": "python train.py",
        "cwd": "/home/alice",
        "submitted_at": utc(T0 - 10),
    }
    fields.update(kw)
    return SimpleJob(**fields)  # type: ignore[arg-type]


def job_in(state: JobState) -> SimpleJob:
    """A job that got to ``state`` the way a real one does."""
    job = make_job()
    if state is JobState.PENDING:
        return job
    if state in (JobState.CANCELLED, JobState.FAILED):
        advance(job, state, T0 - 5, reason="before start")
        return job
    job.node, job.gpu_ids = "node1", [0, 1]
    advance(job, JobState.RUNNING, T0 - 5)
    if state is not JobState.RUNNING:
        advance(job, state, T0 - 1, exit_code=3 if state is JobState.FAILED else None)
    return job


# ---------------------------------------------------------------- the table


def test_table_is_exactly_the_documented_one() -> None:
    got = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert got == EXPECTED_TRANSITIONS
    assert set(TRANSITIONS) == set(JobState)


def test_state_values_are_lowercase_and_ended_is_consistent() -> None:
    assert [s.value for s in JobState] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "timeout",
        "node_fail",
    ]
    for s in JobState:
        assert str(s) == s.value
        assert s.ended == (s not in ACTIVE_STATES)
    assert set(JobState) == ACTIVE_STATES | ENDED_STATES
    assert not ACTIVE_STATES & ENDED_STATES


def test_final_states_have_no_way_out() -> None:
    for s in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT):
        assert TRANSITIONS[s] == frozenset()


# ---------------------------------------------------------------- advance()


@pytest.mark.parametrize(("frm", "to"), ALLOWED, ids=lambda s: s.value)
def test_allowed_transition(frm: JobState, to: JobState) -> None:
    job = job_in(frm)
    advance(job, to, T1, reason="why", exit_code=137 if to.ended else None)
    assert job.state is to
    assert job.reason == "why"
    if to is JobState.RUNNING:
        assert job.started_at == utc(T1)
        assert job.ended_at is None
        assert job.exit_code is None
    elif to is JobState.PENDING:
        # Requeued: the placement and the run's times are gone, the submission time stays.
        assert job.node is None
        assert job.gpu_ids == []
        assert job.started_at is None
        assert job.ended_at is None
        assert job.exit_code is None
        assert job.submitted_at == utc(T0 - 10)
    else:
        assert job.ended_at == utc(T1)
        assert job.exit_code == 137
        if frm is JobState.RUNNING:
            assert job.started_at == utc(T0 - 5)
            assert job.node == "node1"  # where it ran stays visible after it ended


@pytest.mark.parametrize(("frm", "to"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_transition_raises_and_changes_nothing(frm: JobState, to: JobState) -> None:
    job = job_in(frm)
    before = msgspec.structs.asdict(job)
    with pytest.raises(InvalidTransition) as info:
        advance(job, to, T1, reason="nope", exit_code=1)
    assert msgspec.structs.asdict(job) == before
    err = info.value
    assert isinstance(err, MgpuError)
    assert (err.job_id, err.frm, err.to) == (7, frm.value, to.value)
    assert err.message == f"job 7 cannot go from {frm.value} to {to.value}"


def test_reason_is_replaced_not_kept() -> None:
    job = job_in(JobState.RUNNING)
    advance(job, JobState.NODE_FAIL, T1, reason="node node1 lost")
    assert job.reason == "node node1 lost"
    advance(job, JobState.PENDING, T1 + 1)
    assert job.reason is None


def test_requeued_job_runs_again_with_fresh_times() -> None:
    job = job_in(JobState.RUNNING)
    advance(job, JobState.PENDING, T1, reason="requeued")
    job.node, job.gpu_ids = "node2", [3]
    advance(job, JobState.RUNNING, T1 + 5)
    assert job.started_at == utc(T1 + 5)
    advance(job, JobState.COMPLETED, T1 + 9, exit_code=0)
    assert (job.node, job.gpu_ids, job.exit_code) == ("node2", [3], 0)
    assert job.ended_at == utc(T1 + 9)


def test_utc_is_timezone_aware() -> None:
    assert utc(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert utc(T0).tzinfo is UTC


# ---------------------------------------------------------------- the JSON contract

JOB_FIELDS = [
    "id",
    "name",
    "user",
    "state",
    "gpus",
    "command",
    "cwd",
    "node",
    "gpu_ids",
    "exit_code",
    "reason",
    "time_limit",
    "requeues",
    "max_requeue",
    "interactive",
    "stdin",
    "pty",
    "argv",
    "submitted_at",
    "started_at",
    "ended_at",
    "end_cause",
    # scheduling (README "How scheduling works")
    "pending_reason",
    "expected_start",
    "priority",
    "nice",
    # job controls (README "Job controls")
    "dependency",
    "kill_on_invalid_dep",
    "array_job_id",
    "array_task_id",
    "array_throttle",
    "held",
    "begin_at",
    "retries",
    "max_retries",
    "gpu_type",
    "gpu_mem_mib",
    "gpu_mem_peak_mib",
    "gpu_util_mean",
    "mail_type",  # notifications (issue 13)
    "mail_user",
    "notify_url",
    "backend_id",
    "nodes", "ntasks_per_node", "slurm_env", "parts", "rendezvous",  # multi-node jobs
    "partition",  # mixed mode (issue 14)
    "backend_nodes",  # a SLURM bridge's job: SLURM's nodes (issue 14)
]


def test_job_json_fields_state_and_times() -> None:
    job = job_in(JobState.RUNNING)
    advance(job, JobState.CANCELLED, T1, reason="cancelled by alice", exit_code=143)
    data = json.loads(msgspec.json.encode(job))
    assert list(data) == JOB_FIELDS
    assert data["state"] == "cancelled"
    assert data["exit_code"] == 143
    assert data["end_cause"] == "cancelled"
    assert data["node"] == "node1"
    assert data["gpu_ids"] == [0, 1]
    for key in ("submitted_at", "started_at", "ended_at"):
        text = data[key]
        assert text.endswith("Z"), text
        assert datetime.fromisoformat(text) == getattr(job, key)
    assert data["ended_at"].startswith("2027-01-15T08:01:00.5")
    assert job.to_dict() == data


def test_pending_job_json_has_nulls_not_missing_keys() -> None:
    data = make_job().to_dict()
    assert list(data) == JOB_FIELDS
    assert data["state"] == "pending"
    assert data["node"] is None
    assert data["gpu_ids"] == []
    for key in ("exit_code", "reason", "started_at", "ended_at", "end_cause",
                "pending_reason", "expected_start", "backend_id"):
        assert data[key] is None


def test_job_round_trips_through_json() -> None:
    job = job_in(JobState.TIMEOUT)
    back = msgspec.json.decode(msgspec.json.encode(job), type=SimpleJob)
    assert back == job
    assert back.state is JobState.TIMEOUT
    assert back.job_id == back.id == 7


def test_job_json_rejects_unknown_state() -> None:
    data = make_job().to_dict()
    data["state"] = "RUNNING"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(data), type=SimpleJob)


def test_node_json_contract() -> None:
    node = NodeInfo(
        node_id="node1",
        state="up",
        gpus=[
            GpuInfo(index=0, name="H200", memory_total_mib=143771, uuid="GPU-a", job_id=7),
            GpuInfo(index=1, name="H200", memory_total_mib=143771, uuid="GPU-b"),
        ],
        last_seen=utc(T0),
    )
    data = json.loads(msgspec.json.encode(node))
    assert {"node_id", "state", "gpus", "last_seen"} <= set(data)
    assert data["last_seen"].endswith("Z")
    assert data["gpus"][0] == {
        "index": 0,
        "name": "H200",
        "memory_total_mib": 143771,
        "uuid": "GPU-a",
        "job_id": 7,
        "memory_used_mib": None,  # the node's last usage report (none yet)
        "utilization": None,
        "processes": [],
        "busy_outside": False,
    }
    assert data["gpus"][1]["job_id"] is None
    assert node.free_gpus == [1]


def test_job_spec_defaults_and_unknown_fields() -> None:
    spec = msgspec.json.decode(b'{"command": "echo hi"}', type=JobSpec)
    assert (spec.gpus, spec.name, spec.cwd, spec.env, spec.user) == (1, None, "/", {}, "")
    with pytest.raises(msgspec.ValidationError, match="gpu"):
        msgspec.json.decode(b'{"command": "x", "gpu": 2}', type=JobSpec)
    with pytest.raises(msgspec.ValidationError, match="command"):
        msgspec.json.decode(b'{"gpus": 2}', type=JobSpec)


@pytest.mark.parametrize(("state", "given", "exit_code", "cause"), [
    (JobState.COMPLETED, None, 0, EndCause.EXITED),
    (JobState.FAILED, None, 3, EndCause.EXITED),
    (JobState.FAILED, EndCause.SIGNALED, 137, EndCause.SIGNALED),
    (JobState.FAILED, None, None, None),
    (JobState.FAILED, EndCause.FAILED_TO_START, 127, EndCause.FAILED_TO_START),
    (JobState.CANCELLED, EndCause.SIGNALED, 143, EndCause.CANCELLED),
    (JobState.TIMEOUT, None, 137, EndCause.TIME_LIMIT),
    (JobState.NODE_FAIL, None, None, EndCause.NODE_LOST),
    (JobState.NODE_FAIL, EndCause.KEEPER_DIED, None, EndCause.KEEPER_DIED),
])
def test_why_a_job_ended_is_kept_apart_from_its_state(
        state: JobState, given: EndCause | None, exit_code: int | None,
        cause: EndCause | None) -> None:
    job = job_in(JobState.RUNNING)
    advance(job, state, T1, exit_code=exit_code, end_cause=given)
    assert job.end_cause is cause
