"""What each GPU is doing now: utilisation, memory used, temperature.

:class:`GpuReader` reads the node's GPUs through NVML (nvidia-ml-py), by UUID when the GPU
has one (the index NVML counts in can differ from ours when ``--gpus`` keeps only some),
else by index. A reading NVML cannot give (a field a GPU does not support, a GPU that fell
off the bus) is None and left out of the metrics, never made up.

Fake GPUs (``--fake-gpus``) have fixed, documented readings, so that tests and dashboards
without GPUs see every series: :data:`FAKE_UTILIZATION_PERCENT`,
:data:`FAKE_MEMORY_USED_MIB` and :data:`FAKE_TEMPERATURE_CELSIUS` (their total memory is
``FAKE_GPU_MEMORY_MIB`` of :mod:`mgpu.utils.gpu`, 80 GiB).

Reads block (NVML calls, a few per GPU): call :meth:`GpuReader.read` off the event loop.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from mgpu.core.models import GpuInfo
from mgpu.utils.logging import get_logger

log = get_logger("gpu")

FAKE_UTILIZATION_PERCENT = 0.0
FAKE_MEMORY_USED_MIB = 0
FAKE_TEMPERATURE_CELSIUS = 30.0
MIB = 2**20


@dataclass(frozen=True)
class GpuReading:
    """One GPU, now. ``memory_total_bytes`` is always known (from detection)."""

    index: int
    memory_total_bytes: int
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    temperature_celsius: float | None = None


class GpuReader:
    """Readings of ``gpus``, detected from ``source`` ("fake", "nvml", "nvidia-smi", ...).

    Anything but fake GPUs is read through NVML, initialised on the first read and shut
    down by :meth:`close`; where NVML is missing, only the total memory is known (said once
    in the log). Safe to call from several threads.
    """

    def __init__(self, gpus: list[GpuInfo], source: str) -> None:
        self.gpus = list(gpus)
        self.fake = source == "fake"
        self._nvml: Any = None  # the pynvml module, once initialised
        self._tried = False
        self._lock = threading.Lock()

    def read(self) -> list[GpuReading]:
        if self.fake:
            return [GpuReading(g.index, g.memory_total_mib * MIB, FAKE_UTILIZATION_PERCENT,
                               FAKE_MEMORY_USED_MIB * MIB, FAKE_TEMPERATURE_CELSIUS)
                    for g in self.gpus]
        with self._lock:  # NVML is thread-safe; our first-use set-up is not
            nvml = self._open()
        if nvml is None:
            return [GpuReading(g.index, g.memory_total_mib * MIB) for g in self.gpus]
        return [self._read_one(nvml, g) for g in self.gpus]

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
                self._nvml = None
            self._tried = False

    def _open(self) -> Any:
        if self._tried:
            return self._nvml
        self._tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # ImportError, or NVMLError (no driver, no library)
            log.warning("GPU metrics: NVML is unavailable (%s): only the GPUs' total memory "
                        "is reported", e)
            return None
        self._nvml = pynvml
        return pynvml

    def _read_one(self, nvml: Any, gpu: GpuInfo) -> GpuReading:
        try:
            handle = (nvml.nvmlDeviceGetHandleByUUID(gpu.uuid) if gpu.uuid
                      else nvml.nvmlDeviceGetHandleByIndex(gpu.index))
        except nvml.NVMLError as e:
            log.debug("GPU metrics: GPU %d (%s) not found by NVML: %s", gpu.index, gpu.uuid, e)
            return GpuReading(gpu.index, gpu.memory_total_mib * MIB)
        total = gpu.memory_total_mib * MIB
        used: int | None = None
        util: float | None = None
        temp: float | None = None
        with contextlib.suppress(nvml.NVMLError):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            total, used = int(memory.total), int(memory.used)
        with contextlib.suppress(nvml.NVMLError):
            util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        with contextlib.suppress(nvml.NVMLError):
            temp = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        return GpuReading(gpu.index, total, util, used, temp)
