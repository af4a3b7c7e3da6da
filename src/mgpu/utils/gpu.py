"""Which GPUs this machine has: fake ones, NVML, ``nvidia-smi``, or none.

:func:`detect_gpus` tries, in order:

1. ``fake`` given → fake GPUs, for machines without GPUs and for every test: a count
   (``4``: "Fake GPU", 80 GiB, uuid ``GPU-fake-<i>``) or a spec ``N:TYPE[:MEM]``, groups
   joined by commas (``4:A100:80G``, ``2:H200,2:V100:16G``: "NVIDIA A100", 80 GiB);
   :func:`parse_fake_spec`. What they hold and how busy they are is
   :mod:`mgpu.utils.gpustate`'s (``MGPU_FAKE_GPU_STATE``);
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
from mgpu.core.gputypes import parse_mib
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


def parse_fake_spec(spec: int | str) -> list[GpuInfo]:
    """The fake GPUs of ``--fake-gpus``: a count (``4``) or ``N:TYPE[:MEM]`` groups joined
    by commas (``4:A100:80G``, ``2:H200,2:V100:16G``), numbered from 0 in order. TYPE
    becomes the NVML-like name "NVIDIA TYPE"; MEM defaults to 80G. :class:`UsageError`
    naming the group that cannot be read."""
    if isinstance(spec, int):
        if spec < 0:
            raise UsageError(f"--fake-gpus must be 0 or more, not {spec}")
        return fake_gpus(spec)
    gpus: list[GpuInfo] = []
    for group in spec.split(","):
        count_text, colon, rest = group.strip().partition(":")
        kind, _, mem_text = rest.partition(":")
        if not count_text.isdigit() or (colon and not kind.strip()) or ":" in mem_text:
            raise UsageError(f"--fake-gpus {spec!r}: {group!r} is not N or N:TYPE[:MEM] "
                             "(e.g. 4 or 4:A100:80G)")
        memory = parse_mib(mem_text, f"--fake-gpus {spec!r}") if mem_text else None
        name = FAKE_GPU_NAME if not kind else (
            kind.strip() if kind.strip().lower().startswith("nvidia") else
            f"NVIDIA {kind.strip()}")
        for _ in range(int(count_text)):
            i = len(gpus)
            gpus.append(GpuInfo(index=i, name=name, uuid=f"GPU-fake-{i}",
                                memory_total_mib=memory or FAKE_GPU_MEMORY_MIB))
    return gpus


def detect_gpus(
    restrict: list[int] | None = None, fake: int | str | None = None
) -> tuple[list[GpuInfo], str]:
    """The GPUs to offer and where they came from ("fake", "nvml", "nvidia-smi", "none").

    ``restrict`` keeps only the listed indices (in index order); a listed index that does
    not exist raises :class:`UsageError` naming it. ``fake`` of None, 0 or "0" means
    detect; else it is :func:`parse_fake_spec`'s.
    """
    gpus: list[GpuInfo] = []
    source = "none"
    declared = parse_fake_spec(fake) if fake is not None else []
    if declared:
        gpus, source = declared, "fake"
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
