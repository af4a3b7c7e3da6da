"""GPU types and memory sizes as people write them: pure parsing, no I/O.

A GPU's *type* is a short lowercase model name taken from its NVML name, so that a job
asking for ``--gpu-type A100`` matches "NVIDIA A100-SXM4-80GB" and "NVIDIA A100 80GB PCIe":

* the vendor and brand words (``NVIDIA``, ``Tesla``, ``GeForce``, ``Quadro``) are dropped,
  also when joined to the model by ``-`` (``nvidia-a100``);
* the first word left is the model, cut at its first ``-`` (``A100-SXM4-80GB`` → ``a100``);
  ``RTX`` is joined to the word after it (``RTX 4090`` → ``rtx4090``);
* a short alias list maps other spellings to one name (``4090`` → ``rtx4090``,
  ``a6000`` → ``rtxa6000``).

:func:`gpu_type` applies the same rule to what a user types and to an NVML name, so
matching is one string comparison. Memory sizes (``--gpu-mem 20G``, ``--fake-gpus
4:A100:80G``) are :func:`parse_mib`'s.
"""

from __future__ import annotations

import re

from mgpu.core.errors import UsageError

_BRANDS = frozenset({"nvidia", "tesla", "geforce", "quadro"})

# Other spellings of a type → the type (what gpu_type derives from the NVML name).
ALIASES: dict[str, str] = {
    "4090": "rtx4090",
    "3090": "rtx3090",
    "2080ti": "rtx2080",
    "a6000": "rtxa6000",
    "a5000": "rtxa5000",
    "a4000": "rtxa4000",
    "6000ada": "rtx6000",
    "gh200": "gh200",
    "h100nvl": "h100",
    "a100x": "a100",
}

_UNITS = {"": 1, "M": 1, "MB": 1, "MIB": 1, "G": 1024, "GB": 1024, "GIB": 1024,
          "T": 1024 * 1024, "TB": 1024 * 1024, "TIB": 1024 * 1024}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def gpu_type(name: str) -> str:
    """The type of a GPU named ``name`` (an NVML name, or what a user typed); "" when the
    name holds no model word."""
    text = name.lower().replace("_", "-")
    for brand in _BRANDS:  # ("NVIDIA-A100": a brand joined to the model)
        text = text.replace(f"{brand}-", f"{brand} ")
    words = [w for w in text.split() if w not in _BRANDS]
    if not words:
        return ""
    first = words[0]
    if first == "rtx" and len(words) > 1:
        first = "rtx" + words[1]
    elif first.startswith("rtx-"):
        first = "rtx" + first[4:]
    model = first.split("-", 1)[0] or first.strip("-")
    return ALIASES.get(model, model)


def common_type(names: list[str]) -> str:
    """The type of a node's GPUs named ``names``: the most common (the first listed of
    those tied), "" with none."""
    counts: dict[str, int] = {}
    for name in names:
        kind = gpu_type(name)
        counts[kind] = counts.get(kind, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else ""


def parse_mib(text: str, what: str) -> int:
    """``"20G"``, ``"20GiB"``, ``"1.5T"``, ``"512M"`` or ``"20480"`` (MiB) → MiB (units
    are binary, as ``nvidia-smi`` counts). :class:`UsageError` naming ``what`` otherwise."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f"{what}: {text!r} is not a memory size: write e.g. 20G, 512M or "
                         "20480 (MiB)")
    mib = int(float(match.group(1)) * _UNITS[unit])
    if mib <= 0:
        raise UsageError(f"{what}: {text!r} must be more than 0")
    return mib


def format_mib(mib: int) -> str:
    """``81920`` → ``"80G"``, ``1536`` → ``"1.5G"``, ``500`` → ``"500M"``."""
    if mib < 1024:
        return f"{mib}M"
    return f"{mib / 1024:.1f}".removesuffix(".0") + "G"


def parse_constraint(text: str) -> str:
    """``--constraint gpu=h200`` → the GPU type asked for (``"h200"``); only ``gpu=`` is a
    constraint mgpu knows, anything else is a :class:`UsageError` saying so."""
    key, sep, value = text.partition("=")
    if key.strip().lower() != "gpu" or not sep or not gpu_type(value):
        raise UsageError(f"--constraint {text!r}: mgpu knows one constraint, gpu=TYPE "
                         "(e.g. --constraint gpu=a100)")
    return value.strip()
