"""Wire messages: msgpack round trips, JSON requests, output frames (tier 1: no I/O)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu.core.messages import (
    FRAME_HEADER,
    PROTOCOL_VERSION,
    STREAM_END,
    STREAM_STDERR,
    STREAM_STDOUT,
    CancelJob,
    CancelReply,
    CancelRequest,
    CancelResult,
    EndedAck,
    ErrorReply,
    HealthReply,
    Heartbeat,
    HoldJob,
    JobEnded,
    JobInput,
    JobInputAck,
    JobListReply,
    JobOutput,
    JobQueued,
    JobResize,
    JobSignal,
    JobStarted,
    MessageType,
    NodeHealth,
    NodeLog,
    NodeLogRecord,
    OutputEnd,
    QueueOrder,
    Register,
    Registered,
    RunningReport,
    StartJob,
    SubmitReply,
    SubmitRequest,
    WaitRequest,
    frame,
    master_message_decoder,
    node_encoder,
    node_message_decoder,
    split_frames,
)
from mgpu.core.models import GpuInfo, JobSpec, JobState, SimpleJob, utc

ENDED = JobEnded(job_id=3, run=0, state="failed", exit_code=137, reason="signal 9", output_size=42)

NODE_MESSAGES: list[Any] = [
    Register(
        node_id="node1",
        gpus=[GpuInfo(index=0, name="H200", memory_total_mib=143771, uuid="GPU-x")],
        hostname="gpu01",
        running=[RunningReport(job_id=5, run=1, output_size=1024)],
    ),
    Register(node_id="empty", gpus=[]),
    Heartbeat(),
    JobStarted(job_id=5, pid=4242),
    JobOutput(job_id=5, run=1, offset=1024, data=frame(STREAM_STDOUT, b"hi\n") + b"\x00\xff"),
    ENDED,
    JobEnded(job_id=4, run=0, state="completed", exit_code=0, reason=None, output_size=0),
    Register(node_id="alices", gpus=[], users=["alice"], degraded="the node keeper died"),
    NodeHealth(degraded="the node keeper died; restarting it"),
    NodeHealth(),
    JobInputAck(job_id=5, delivered=1 << 20),
    NodeLog(records=[NodeLogRecord(time=1.5, level="warning", logger="mgpu.node.n1",
                                   message="the node keeper died; restarting it")]),
    JobQueued(job_id=5, run=0, backend_id="4242", state="PENDING", reason="JobHeldUser"),
    JobQueued(job_id=5, run=0, backend_id="4242", state="RUNNING", start_time=1.5e9),
    Register(node_id="sq", gpus=[], partition="slurm", slurm_queue=True),
]

MASTER_MESSAGES: list[Any] = [
    Registered(
        accepted=True, output_offsets={"5.1": 1024, "6.0": 0}, kill=["9.0"],
        heartbeat_interval=0.5,
    ),
    Registered(accepted=False, error="protocol 2 is not supported: upgrade the node"),
    StartJob(
        job_id=5,
        run=0,
        command="python train.py --lr 1e-3",
        cwd="/home/alice",
        env={"PATH": "/usr/bin", "WANDB_MODE": "offline"},
        gpu_ids=[0, 2],
        user="alice",
        name="train",
    ),
    CancelJob(job_id=5),
    CancelJob(job_id=6, reason="time limit"),
    EndedAck(runs=["3.0", "4.2"]),
    JobInput(job_id=5, data=b"\x00line\n"),
    JobInput(job_id=5, data=b"", eof=True),
    JobSignal(job_id=5, signum=2),
    JobResize(job_id=5, rows=40, cols=120),
    HoldJob(job_id=5, hold=True),
    StartJob(job_id=6, run=0, command="true", cwd="/", env={}, gpu_ids=[0], user="alice",
             name="t", queue=QueueOrder(dependency="afterok:5", hold=True, begin=2e9)),
]


def kind(msg: Any) -> str:
    return type(msg).__name__


@pytest.mark.parametrize("msg", NODE_MESSAGES, ids=kind)
def test_node_message_round_trip(msg: Any) -> None:
    wire = node_encoder.encode(msg)
    assert node_message_decoder.decode(wire) == msg
    # The master's decoder refuses what only a node may send (heartbeats go both ways).
    if not isinstance(msg, Heartbeat):
        with pytest.raises(msgspec.ValidationError):
            master_message_decoder.decode(wire)


@pytest.mark.parametrize("msg", MASTER_MESSAGES, ids=kind)
def test_master_message_round_trip(msg: Any) -> None:
    wire = node_encoder.encode(msg)
    assert master_message_decoder.decode(wire) == msg
    with pytest.raises(msgspec.ValidationError):
        node_message_decoder.decode(wire)


def test_a_frame_carries_one_message_or_a_bounded_list_of_them() -> None:
    from mgpu.core.messages import (
        MAX_BATCH,
        decode_master_frame,
        decode_node_frame,
        node_frame_decoder,
    )

    node = [msg for msg in NODE_MESSAGES if not isinstance(msg, Register)]
    assert decode_node_frame(node_encoder.encode(node)) == node
    assert decode_node_frame(node_encoder.encode(node[0])) == node[:1]
    assert decode_master_frame(node_encoder.encode(MASTER_MESSAGES)) == MASTER_MESSAGES
    with pytest.raises(msgspec.ValidationError):
        node_frame_decoder.decode(node_encoder.encode([Heartbeat()] * (MAX_BATCH + 1)))
    with pytest.raises(msgspec.ValidationError):  # an empty frame says nothing
        node_frame_decoder.decode(node_encoder.encode([]))
    with pytest.raises(msgspec.ValidationError):  # a master's message in a node's frame
        node_frame_decoder.decode(node_encoder.encode([Heartbeat(), MASTER_MESSAGES[1]]))


def test_take_frame_takes_what_waits_up_to_the_bounds() -> None:
    import asyncio

    from mgpu.core.messages import (
        BATCH_BYTES,
        MAX_BATCH,
        JobOutput,
        decode_node_frame,
        take_frame,
    )

    def sent(frame: bytes) -> list[Any]:
        return list(decode_node_frame(frame))

    q: asyncio.Queue[Any] = asyncio.Queue()
    assert take_frame(Heartbeat(), q) == node_encoder.encode(Heartbeat())  # alone: as is
    for _ in range(3):
        q.put_nowait(Heartbeat())
    assert sent(take_frame(Heartbeat(), q)) == [Heartbeat()] * 4 and q.empty()
    for n in (15, 16, 40):  # both forms of the array header
        for _ in range(n):
            q.put_nowait(Heartbeat())
        assert sent(take_frame(Heartbeat(), q)) == [Heartbeat()] * (n + 1)
    big = JobOutput(1, 0, 0, bytes(BATCH_BYTES))
    q.put_nowait(big)
    q.put_nowait(Heartbeat())
    assert sent(take_frame(Heartbeat(), q)) == [Heartbeat(), big]  # full: the rest waits
    assert q.qsize() == 1
    q.get_nowait()
    for _ in range(2 * MAX_BATCH):
        q.put_nowait(Heartbeat())
    assert len(sent(take_frame(Heartbeat(), q))) == MAX_BATCH
    assert q.qsize() == MAX_BATCH + 1


def test_every_message_type_is_covered_and_tagged_by_type() -> None:
    tags = set()
    for msg in NODE_MESSAGES + MASTER_MESSAGES:
        raw = msgspec.msgpack.decode(node_encoder.encode(msg))
        tags.add(raw["type"])
    assert tags == {t.value for t in MessageType}


def test_register_defaults_to_this_protocol() -> None:
    raw = {"type": "register", "node_id": "n", "gpus": []}
    msg = node_message_decoder.decode(msgspec.msgpack.encode(raw))
    assert isinstance(msg, Register)
    assert msg.protocol == PROTOCOL_VERSION
    assert msg.running == []


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "no_such_message"},
        {"node_id": "n", "gpus": []},  # no tag
        {"type": "job_started", "job_id": "5", "pid": 1},  # wrong type
        {"type": "job_started", "job_id": 5},  # missing field
    ],
)
def test_bad_node_messages_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        node_message_decoder.decode(msgspec.msgpack.encode(raw))


# ---------------------------------------------------------------- client ↔ master JSON


@pytest.mark.parametrize(
    ("cls", "body"),
    [
        (SubmitRequest, {"jobs": [{"command": "echo hi"}], "priority": 1}),
        (SubmitRequest, {"jobs": [{"command": "echo hi", "gres": "gpu:2"}]}),
        (CancelRequest, {"job_ids": [1], "force": True}),
        (WaitRequest, {"job_ids": [1], "timout": 5}),
    ],
)
def test_requests_forbid_unknown_fields(cls: type[Any], body: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(json.dumps(body), type=cls)


def test_requests_round_trip_and_defaults() -> None:
    req = SubmitRequest(jobs=[JobSpec(command="python t.py", gpus=2, name="t", env={"A": "1"})])
    assert msgspec.json.decode(msgspec.json.encode(req), type=SubmitRequest) == req
    wait = msgspec.json.decode(b'{"job_ids": [1, 2]}', type=WaitRequest)
    assert wait.timeout == 30.0
    with pytest.raises(msgspec.ValidationError, match=r"job_ids"):
        msgspec.json.decode(b'{"job_ids": ["x"]}', type=CancelRequest)


def test_replies_round_trip() -> None:
    job = SimpleJob(
        id=1,
        name="j",
        user="u",
        state=JobState.PENDING,
        gpus=1,
        command="c",
        cwd="/",
        submitted_at=utc(0),
    )
    replies: list[Any] = [
        SubmitReply(job_ids=[1, 2]),
        JobListReply(jobs=[job]),
        CancelReply(
            results=[
                CancelResult(job_id=1, ok=True, state="cancelled"),
                CancelResult(job_id=2, ok=False, error="job 2 not found"),
            ]
        ),
        ErrorReply(error="gpus: expected int", code="bad_request"),
        ErrorReply(error="job 9 not found", code="not_found"),
        HealthReply(status="ok", version="0.1.0"),
        OutputEnd(state="completed", exit_code=0),
    ]
    for reply in replies:
        assert msgspec.json.decode(msgspec.json.encode(reply), type=type(reply)) == reply


def test_cancel_result_omits_absent_fields() -> None:
    data = json.loads(msgspec.json.encode(CancelResult(job_id=1, ok=True)))
    assert data == {"job_id": 1, "ok": True}


# ---------------------------------------------------------------- output frames


def test_frame_layout() -> None:
    assert frame(STREAM_STDERR, b"abc") == b"\x02\x00\x00\x00\x03abc"
    assert FRAME_HEADER.size == 5
    assert frame(STREAM_STDOUT, b"") == b"\x01\x00\x00\x00\x00"


def test_split_complete_frames() -> None:
    end = msgspec.json.encode(OutputEnd(state="completed", exit_code=0))
    buf = frame(STREAM_STDOUT, b"out\n") + frame(STREAM_STDERR, b"") + frame(STREAM_END, end)
    frames, used = split_frames(buf)
    assert frames == [(STREAM_STDOUT, b"out\n"), (STREAM_STDERR, b""), (STREAM_END, end)]
    assert used == len(buf)
    assert msgspec.json.decode(frames[-1][1], type=OutputEnd).exit_code == 0


@pytest.mark.parametrize("cut", range(0, 14))
def test_split_stops_before_a_partial_frame(cut: int) -> None:
    first = frame(STREAM_STDOUT, b"hello")  # 10 bytes
    second = frame(STREAM_STDERR, b"world!")  # 11 bytes
    buf = (first + second)[: len(first) + cut] if cut < 11 else first + second[:cut]
    frames, used = split_frames(buf)
    if len(buf) >= len(first) + len(second):
        assert frames == [(1, b"hello"), (2, b"world!")]
        assert used == len(first) + len(second)
    else:
        assert frames == [(1, b"hello")]
        assert used == len(first)


def test_split_empty_and_header_only() -> None:
    assert split_frames(b"") == ([], 0)
    assert split_frames(b"\x01\x00\x00") == ([], 0)
    assert split_frames(b"\x01\x00\x00\x00\x04ab") == ([], 0)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(st.sampled_from([STREAM_STDOUT, STREAM_STDERR]), st.binary(max_size=40)),
        max_size=8,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_split_resumes_at_any_offset(chunks: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """Reading a stream in arbitrary pieces yields exactly the frames written."""
    stream = b"".join(frame(s, d) for s, d in chunks)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    got: list[tuple[int, bytes]] = []
    pending = b""
    offset = 0
    for b in bounds:
        pending += stream[offset:b]
        offset = b
        frames, used = split_frames(pending)
        got += frames
        pending = pending[used:]
    assert got == chunks
    assert pending == b""


def test_complete_frames_stops_before_a_partial_frame() -> None:
    from mgpu.core.frames import complete_frames

    two = frame(STREAM_STDOUT, b"a" * 70_000) + frame(STREAM_STDERR, b"bc")
    assert complete_frames(two) == len(two)
    assert complete_frames(two[:-1]) == FRAME_HEADER.size + 70_000
    assert complete_frames(two[:3]) == 0
    assert complete_frames(b"") == 0
