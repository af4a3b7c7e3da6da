"""What each GPU holds now: memory used, utilisation and compute processes.

Two samplers, each ``sample() -> dict[index, GpuUsage]`` for the GPUs it was given:

* :class:`NvmlSampler` asks NVML (nvidia-ml-py): ``nvmlDeviceGetMemoryInfo``,
  ``nvmlDeviceGetUtilizationRates`` and ``nvmlDeviceGetComputeRunningProcesses``; a query
  a GPU does not support leaves its figure None.
* :class:`FakeSampler` reads a JSON file, so that tests (and demos) can make fake GPUs
  busy. Its path is the node setting ``fake_gpu_state`` (``MGPU_FAKE_GPU_STATE``); it is
  read on every sample, and a missing file means every GPU is idle::

      {"0": {"memory_used_mib": 30000, "utilization": 90,
             "processes": [{"pid": 4242, "memory_used_mib": 30000, "user": "bob"}]},
       "node2/1": {"utilization": 50}}

  A key is a GPU index (every node reading the file) or ``NODE_ID/INDEX`` (that node
  only; it wins). ``memory_used_mib`` defaults to the processes' sum, ``utilization`` to
  0, a process's ``user`` to the owner of that pid here (None if there is none).

Processes come back unattributed (``job_id`` None, ``outside`` False): which job a process
belongs to is the agent's to say (``node/gpuwatch.py``). :func:`sampler_for` picks one.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Protocol

import psutil

from mgpu.core.models import MAX_GPU_PROCESSES, GpuProcess, GpuUsage
from mgpu.utils.logging import get_logger

log = get_logger("gpu")


class Sampler(Protocol):
    def sample(self) -> dict[int, GpuUsage]: ...
    def close(self) -> None: ...


def user_of(pid: int) -> str | None:
    """The user running ``pid`` here, or None (gone, or not ours to see)."""
    try:
        return psutil.Process(pid).username()
    except (psutil.Error, KeyError):  # (KeyError: a uid with no account)
        return None


def bounded(index: int, used: int | None, util: int | None,
            processes: list[GpuProcess]) -> GpuUsage:
    """A report of one GPU, its processes cut to :data:`MAX_GPU_PROCESSES` (biggest first)."""
    processes = sorted(processes, key=lambda p: (-(p.memory_used_mib or 0), p.pid))
    return GpuUsage(index=index, memory_used_mib=used, utilization=util,
                    processes=processes[:MAX_GPU_PROCESSES],
                    more_processes=max(0, len(processes) - MAX_GPU_PROCESSES))


def parse_fake_state(data: Any, node_id: str, indices: list[int],
                     find_user: Any = user_of) -> dict[int, GpuUsage]:
    """The usage of GPUs ``indices`` of node ``node_id`` from a fake state document (see the
    module docstring); ``ValueError`` naming what is wrong in it."""
    if not isinstance(data, dict):
        raise ValueError("the fake GPU state must be a JSON object keyed by GPU index")
    out: dict[int, GpuUsage] = {}
    for index in indices:
        entry = data.get(f"{node_id}/{index}", data.get(str(index), {}))
        if not isinstance(entry, dict):
            raise ValueError(f"GPU {index}: want an object, got {entry!r}")
        procs: list[GpuProcess] = []
        for raw in entry.get("processes", []):
            if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
                raise ValueError(f"GPU {index}: a process needs an integer pid, got {raw!r}")
            pid = raw["pid"]
            user = raw.get("user")
            procs.append(GpuProcess(pid=pid, memory_used_mib=_int(raw, "memory_used_mib", 0),
                                    user=str(user) if user is not None else find_user(pid)))
        used = _int(entry, "memory_used_mib", None)
        if used is None:
            used = sum(p.memory_used_mib or 0 for p in procs)
        util = _int(entry, "utilization", 0)
        if util is not None and not 0 <= util <= 100:
            raise ValueError(f"GPU {index}: utilization is a percent, got {util}")
        out[index] = bounded(index, used, util, procs)
    return out


def _int(entry: dict[str, Any], key: str, default: int | None) -> int | None:
    value = entry.get(key, default)
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"{key} must be a whole number of 0 or more, got {value!r}")
    return value


class FakeSampler:
    """Fake GPUs' usage from the JSON file at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, node_id: str, indices: list[int]) -> None:
        self.path, self.node_id, self.indices = path, node_id, indices
        self._warned = ""

    def sample(self) -> dict[int, GpuUsage]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = "{}"
        except OSError as e:
            return self._bad(f"cannot read it: {e}")
        try:
            return parse_fake_state(json.loads(text or "{}"), self.node_id, self.indices)
        except ValueError as e:  # (json's errors are ValueErrors too)
            return self._bad(str(e))

    def _bad(self, why: str) -> dict[int, GpuUsage]:
        """A broken file is said once (until it changes), and reads as idle GPUs."""
        if why != self._warned:
            log.warning("fake GPU state %s: %s; taking the GPUs as idle", self.path, why)
            self._warned = why
        return {i: GpuUsage(index=i, memory_used_mib=0, utilization=0) for i in self.indices}

    def close(self) -> None:
        pass


class NvmlSampler:
    """Real GPUs' usage through NVML; :meth:`open` returns None where NVML is not there."""

    def __init__(self, nvml: Any, handles: dict[int, Any]) -> None:
        self.nvml, self.handles = nvml, handles

    @classmethod
    def open(cls, indices: list[int]) -> NvmlSampler | None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except (ImportError, OSError) as e:
            log.debug("GPU usage: NVML unavailable: %s", e)
            return None
        except Exception as e:  # pynvml.NVMLError, whose module may be missing
            log.debug("GPU usage: NVML unavailable: %s", e)
            return None
        try:
            handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        except pynvml.NVMLError as e:
            log.warning("GPU usage: NVML cannot open the GPUs (%s): no usage reports", e)
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handles)

    def sample(self) -> dict[int, GpuUsage]:
        nv = self.nvml
        out: dict[int, GpuUsage] = {}
        for index, handle in self.handles.items():
            used: int | None = None
            util: int | None = None
            procs: list[GpuProcess] = []
            with contextlib.suppress(nv.NVMLError):
                used = int(nv.nvmlDeviceGetMemoryInfo(handle).used) // 2**20
            with contextlib.suppress(nv.NVMLError):
                util = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            with contextlib.suppress(nv.NVMLError):
                for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    mem = getattr(p, "usedGpuMemory", None)
                    procs.append(GpuProcess(
                        pid=int(p.pid), user=user_of(int(p.pid)),
                        memory_used_mib=int(mem) // 2**20 if isinstance(mem, int) else None))
            out[index] = bounded(index, used, util, procs)
        return out

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def sampler_for(source: str, node_id: str, indices: list[int],
                fake_state: Path | None) -> Sampler | None:
    """How this node reads its GPUs' usage: the fake state file for fake (or given) GPUs
    when one is set, NVML for real ones; None when neither can (no usage is reported)."""
    if source in ("fake", "given"):
        return FakeSampler(fake_state, node_id, indices) if fake_state is not None else None
    return NvmlSampler.open(indices)
