"""Which GPUs this machine has: fake ones, NVML, ``nvidia-smi``, or none.

:func:`detect_gpus` tries, in order:

1. ``fake`` > 0 → that many fake GPUs ("Fake GPU", 80 GiB, uuid ``GPU-fake-<i>``), for
   machines without GPUs and for every test;
2. NVML through ``pynvml`` (the nvidia-ml-py package);
3. ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits``;
4. nothing: an empty list with source ``"none"``.

A source that is missing or fails falls through to the next one (logged at debug level).
Indices are the physical ones (PCI bus order, as ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes
CUDA see them), so a restricted list (``--gpus 0,2``) keeps indices 0 and 2.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess

from mgpu.core.errors import UsageError
from mgpu.core.models import GpuInfo
from mgpu.utils.logging import get_logger

log = get_logger("gpu")

FAKE_GPU_NAME = "Fake GPU"
FAKE_GPU_MEMORY_MIB = 81920
NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,uuid",
    "--format=csv,noheader,nounits",
]
NVIDIA_SMI_TIMEOUT = 15.0


def fake_gpus(count: int) -> list[GpuInfo]:
    """``count`` fake GPUs numbered from 0."""
    return [
        GpuInfo(
            index=i, name=FAKE_GPU_NAME, memory_total_mib=FAKE_GPU_MEMORY_MIB, uuid=f"GPU-fake-{i}"
        )
        for i in range(count)
    ]


def detect_gpus(
    restrict: list[int] | None = None, fake: int | None = None
) -> tuple[list[GpuInfo], str]:
    """The GPUs to offer and where they came from ("fake", "nvml", "nvidia-smi", "none").

    ``restrict`` keeps only the listed indices (in index order); a listed index that does
    not exist raises :class:`UsageError` naming it. ``fake`` of None or 0 means detect.
    """
    if fake is not None and fake < 0:
        raise UsageError(f"--fake-gpus must be 0 or more, not {fake}")
    gpus: list[GpuInfo] = []
    source = "none"
    if fake:
        gpus, source = fake_gpus(fake), "fake"
    else:
        for name, probe in (("nvml", _from_nvml), ("nvidia-smi", _from_nvidia_smi)):
            found = probe()
            if found:
                gpus, source = found, name
                break
    if restrict is not None:
        gpus = restrict_gpus(gpus, restrict, source)
    return gpus, source


def restrict_gpus(gpus: list[GpuInfo], keep: list[int], source: str = "") -> list[GpuInfo]:
    """Only the GPUs whose index is in ``keep``; :class:`UsageError` if one is missing."""
    have = {g.index for g in gpus}
    missing = sorted(set(keep) - have)
    if missing:
        listed = ", ".join(str(i) for i in missing)
        plural = "s" if len(missing) > 1 else ""
        if not gpus:
            raise UsageError(
                f"--gpus asks for GPU{plural} {listed}, but no GPUs were found on this machine "
                "(neither NVML nor nvidia-smi report any): use --fake-gpus N to declare some"
            )
        available = ", ".join(str(i) for i in sorted(have))
        where = f" (from {source})" if source else ""
        raise UsageError(
            f"--gpus asks for GPU{plural} {listed}, which this machine does not have: "
            f"its GPUs are {available}{where}"
        )
    wanted = set(keep)
    return [g for g in gpus if g.index in wanted]


def parse_gpu_list(text: str) -> list[int]:
    """``"0,2"`` or ``"0-3,6"`` → sorted GPU indices; :class:`UsageError` if malformed."""
    out: list[int] = []
    if not text.strip():
        raise UsageError("--gpus is empty: give GPU indices such as 0,2 or 0-3")
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise UsageError(f"--gpus {text!r} has an empty item: write e.g. 0,2")
        lo_text, dash, hi_text = part.partition("-")
        if dash:
            lo, hi = _index(lo_text, part, text), _index(hi_text, part, text)
            if hi < lo:
                raise UsageError(f"--gpus {text!r}: range {part!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            out.append(_index(part, part, text))
    dupes = sorted({i for i in out if out.count(i) > 1})
    if dupes:
        raise UsageError(
            f"--gpus {text!r} lists GPU {', '.join(str(i) for i in dupes)} more than once"
        )
    return sorted(out)


def _index(digits: str, part: str, text: str) -> int:
    digits = digits.strip()
    if not digits.isdigit():
        raise UsageError(
            f"--gpus {text!r}: {part!r} is not a GPU index or range (use e.g. 0,2 or 0-3)"
        )
    return int(digits)


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,uuid`` CSV output.

    Blank lines are skipped; a name containing commas is kept whole; a memory or uuid of
    ``[N/A]`` becomes 0 / None. Raises ValueError naming a line that cannot be read.
    """
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            raise ValueError(f"unexpected nvidia-smi line (want 4 fields): {line!r}")
        index_text, memory_text, uuid = fields[0], fields[-2], fields[-1]
        name = ", ".join(fields[1:-2])
        if not index_text.isdigit():
            raise ValueError(f"unexpected nvidia-smi line (bad index): {line!r}")
        try:
            memory = 0 if _not_available(memory_text) else int(float(memory_text))
        except ValueError:
            raise ValueError(f"unexpected nvidia-smi line (bad memory): {line!r}") from None
        gpus.append(
            GpuInfo(
                index=int(index_text),
                name=name,
                memory_total_mib=memory,
                uuid=None if _not_available(uuid) or not uuid else uuid,
            )
        )
    return gpus


def _not_available(value: str) -> bool:
    return value.strip().upper() in ("[N/A]", "N/A", "[NOT SUPPORTED]")


def _from_nvml() -> list[GpuInfo]:
    try:
        import pynvml
    except ImportError:
        log.debug("GPU detection: pynvml is not installed")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.debug("GPU detection: NVML unavailable: %s", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_mib=int(memory.total) // 2**20,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                )
            )
        return gpus
    except pynvml.NVMLError as e:
        log.debug("GPU detection: NVML query failed: %s", e)
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value: object) -> str:
    """Old pynvml versions return bytes, new ones str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _from_nvidia_smi() -> list[GpuInfo]:
    exe = shutil.which(NVIDIA_SMI_QUERY[0])
    if exe is None:
        log.debug("GPU detection: nvidia-smi not found on PATH")
        return []
    try:
        done = subprocess.run(
            [exe, *NVIDIA_SMI_QUERY[1:]],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("GPU detection: nvidia-smi failed: %s", e)
        return []
    if done.returncode != 0:
        log.debug("GPU detection: nvidia-smi exited %d: %s", done.returncode, done.stderr.strip())
        return []
    try:
        return parse_nvidia_smi(done.stdout)
    except ValueError as e:
        log.warning("GPU detection: cannot read nvidia-smi output: %s", e)
        return []
