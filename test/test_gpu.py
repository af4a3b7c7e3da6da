"""GPU detection and ``--gpus`` parsing (tier 1: NVML and nvidia-smi are faked)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from mgpu.core.errors import UsageError
from mgpu.core.models import GpuInfo
from mgpu.utils import gpu
from mgpu.utils.gpu import detect_gpus, parse_gpu_list, parse_nvidia_smi, restrict_gpus

SMI_OUTPUT = """\
0, NVIDIA H200, 143771, GPU-5c3a1e0e-aaaa-bbbb-cccc-000000000000
1, NVIDIA H200, 143771, GPU-5c3a1e0e-aaaa-bbbb-cccc-000000000001

2, NVIDIA RTX A6000, 49140, GPU-5c3a1e0e-aaaa-bbbb-cccc-000000000002
"""


# ---------------------------------------------------------------- nvidia-smi parsing


def test_parse_nvidia_smi() -> None:
    gpus = parse_nvidia_smi(SMI_OUTPUT)
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[2] == GpuInfo(
        index=2,
        name="NVIDIA RTX A6000",
        memory_total_mib=49140,
        uuid="GPU-5c3a1e0e-aaaa-bbbb-cccc-000000000002",
    )
    assert all(g.job_id is None for g in gpus)


def test_parse_nvidia_smi_odd_but_valid_lines() -> None:
    text = "3, Tesla, V100, SXM2, 16160, [N/A]\n4,A100,[N/A],GPU-x\r\n"
    a, b = parse_nvidia_smi(text)
    assert (a.index, a.name, a.memory_total_mib, a.uuid) == (3, "Tesla, V100, SXM2", 16160, None)
    assert (b.index, b.name, b.memory_total_mib, b.uuid) == (4, "A100", 0, "GPU-x")


def test_parse_nvidia_smi_empty() -> None:
    assert parse_nvidia_smi("") == []
    assert parse_nvidia_smi("\n  \n") == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0, H200, 143771", "want 4 fields"),
        ("x, H200, 143771, GPU-a", "bad index"),
        ("0, H200, lots, GPU-a", "bad memory"),
        ("NVIDIA-SMI has failed because it couldn't communicate", "want 4 fields"),
    ],
)
def test_parse_nvidia_smi_rejects_garbage(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_nvidia_smi(text)


# ---------------------------------------------------------------- --gpus


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", [0]),
        ("0,2", [0, 2]),
        (" 2 , 0 ", [0, 2]),
        ("0-3", [0, 1, 2, 3]),
        ("6,0-1", [0, 1, 6]),
        ("4-4", [4]),
    ],
)
def test_parse_gpu_list(text: str, want: list[int]) -> None:
    assert parse_gpu_list(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--gpus is empty"),
        ("  ", "--gpus is empty"),
        ("0,,2", "has an empty item"),
        ("0,", "has an empty item"),
        ("a", "'a' is not a GPU index"),
        ("-1", "'-1' is not a GPU index"),
        ("1.5", "'1.5' is not a GPU index"),
        ("3-1", "range '3-1' runs backwards"),
        ("0-x", "'0-x' is not a GPU index or range"),
        ("0-1-2", "'0-1-2' is not a GPU index or range"),
        ("0,1,0", "lists GPU 0 more than once"),
        ("0-2,1-3", "lists GPU 1, 2 more than once"),
    ],
)
def test_parse_gpu_list_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_gpu_list(text)
    assert message in info.value.message
    assert info.value.exit_code == 2


# ---------------------------------------------------------------- detect_gpus


@pytest.fixture
def no_real_gpus(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Neither NVML nor nvidia-smi answer; returns the probes that were tried, in order."""
    tried: list[str] = []

    def nvml() -> list[GpuInfo]:
        tried.append("nvml")
        return []

    def smi() -> list[GpuInfo]:
        tried.append("nvidia-smi")
        return []

    monkeypatch.setattr(gpu, "_from_nvml", nvml)
    monkeypatch.setattr(gpu, "_from_nvidia_smi", smi)
    return tried


def test_fake_gpus(no_real_gpus: list[str]) -> None:
    gpus, source = detect_gpus(fake=3)
    assert source == "fake"
    assert no_real_gpus == []  # fake wins without probing the hardware
    assert gpus == [
        GpuInfo(index=i, name="Fake GPU", memory_total_mib=81920, uuid=f"GPU-fake-{i}")
        for i in range(3)
    ]


def test_fake_zero_means_detect(no_real_gpus: list[str]) -> None:
    assert detect_gpus(fake=0) == ([], "none")
    assert no_real_gpus == ["nvml", "nvidia-smi"]


def test_fake_negative_is_an_error(no_real_gpus: list[str]) -> None:
    with pytest.raises(UsageError, match="--fake-gpus must be 0 or more"):
        detect_gpus(fake=-1)


def test_restrict_keeps_listed_indices(no_real_gpus: list[str]) -> None:
    gpus, source = detect_gpus(restrict=[3, 1], fake=4)
    assert source == "fake"
    assert [g.index for g in gpus] == [1, 3]
    assert [g.uuid for g in gpus] == ["GPU-fake-1", "GPU-fake-3"]


def test_restrict_to_missing_gpus_names_them(no_real_gpus: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        detect_gpus(restrict=[1, 5, 7], fake=2)
    assert info.value.message == (
        "--gpus asks for GPUs 5, 7, which this machine does not have: its GPUs are 0, 1 (from fake)"
    )


def test_restrict_without_any_gpu(no_real_gpus: list[str]) -> None:
    with pytest.raises(UsageError, match=r"GPU 0, but no GPUs were found.*--fake-gpus N"):
        detect_gpus(restrict=[0])


def test_restrict_gpus_empty_list_keeps_nothing() -> None:
    assert restrict_gpus(gpu.fake_gpus(2), []) == []


def test_nothing_found(no_real_gpus: list[str]) -> None:
    assert detect_gpus() == ([], "none")


def test_nvml_is_tried_before_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    found = [GpuInfo(index=0, name="X", memory_total_mib=1)]
    monkeypatch.setattr(gpu, "_from_nvml", lambda: found)
    monkeypatch.setattr(gpu, "_from_nvidia_smi", lambda: pytest.fail("nvidia-smi was run"))
    assert detect_gpus() == (found, "nvml")


def test_nvidia_smi_when_nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_from_nvml", list)
    monkeypatch.setattr(gpu, "_from_nvidia_smi", lambda: parse_nvidia_smi(SMI_OUTPUT))
    gpus, source = detect_gpus(restrict=[2])
    assert source == "nvidia-smi"
    assert [g.name for g in gpus] == ["NVIDIA RTX A6000"]


# ---------------------------------------------------------------- the NVML probe


class FakeNvml:
    """Stands in for the few pynvml calls detection makes."""

    def __init__(self, names: list[Any], fail_at: str | None = None) -> None:
        self.names = names
        self.fail_at = fail_at
        self.shutdown = 0

    def _maybe_fail(self, where: str) -> None:
        if where == self.fail_at:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def init() -> None:
            self._maybe_fail("init")

        def count() -> int:
            self._maybe_fail("count")
            return len(self.names)

        def handle(i: int) -> int:
            self._maybe_fail("handle")
            return i

        def shutdown() -> None:
            self.shutdown += 1

        for name, fn in {
            "nvmlInit": init,
            "nvmlDeviceGetCount": count,
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetName": lambda h: self.names[h],
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=(h + 1) * 2**30 + 5),
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
            "nvmlShutdown": shutdown,
        }.items():
            monkeypatch.setattr(pynvml, name, fn)


def test_nvml_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(["NVIDIA H200", b"Old Bytes Name"])
    nvml.install(monkeypatch)
    gpus, source = detect_gpus()
    assert source == "nvml"
    assert gpus == [
        GpuInfo(index=0, name="NVIDIA H200", memory_total_mib=1024, uuid="GPU-0"),
        GpuInfo(index=1, name="Old Bytes Name", memory_total_mib=2048, uuid="GPU-1"),
    ]
    assert nvml.shutdown == 1


@pytest.mark.parametrize("fail_at", ["init", "count", "handle"])
def test_nvml_errors_fall_through(monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    nvml = FakeNvml(["A"], fail_at=fail_at)
    nvml.install(monkeypatch)
    assert gpu._from_nvml() == []
    assert nvml.shutdown == (0 if fail_at == "init" else 1)


# ---------------------------------------------------------------- the nvidia-smi probe


def fake_run(returncode: int = 0, stdout: str = "", exc: Exception | None = None) -> Any:
    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:] == gpu.NVIDIA_SMI_QUERY[1:]
        assert kw["timeout"] > 0
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(cmd, returncode, stdout, "boom")

    return run


@pytest.mark.parametrize(
    ("which", "run", "want"),
    [
        (None, fake_run(stdout=SMI_OUTPUT), 0),
        ("/usr/bin/nvidia-smi", fake_run(stdout=SMI_OUTPUT), 3),
        ("/usr/bin/nvidia-smi", fake_run(returncode=9, stdout=SMI_OUTPUT), 0),
        ("/usr/bin/nvidia-smi", fake_run(stdout="garbage"), 0),
        ("/usr/bin/nvidia-smi", fake_run(exc=subprocess.TimeoutExpired("nvidia-smi", 1)), 0),
        ("/usr/bin/nvidia-smi", fake_run(exc=PermissionError(13, "denied")), 0),
    ],
    ids=["not-installed", "ok", "exit-9", "garbage", "hangs", "not-executable"],
)
def test_nvidia_smi_probe(
    monkeypatch: pytest.MonkeyPatch, which: str | None, run: Any, want: int
) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: which)
    monkeypatch.setattr(gpu.subprocess, "run", run)
    assert len(gpu._from_nvidia_smi()) == want
