"""mgpu: a multi-GPU job scheduler for labs and small clusters.

::

    from mgpu import SimpleClient
    job_id = SimpleClient("localhost", 8080).submit_job(gpus=2, cmd="python train.py")

The public names below are imported on first use, so ``import mgpu`` (and with it every
``mgpu`` command) stays cheap and the client never loads the master's or the agent's
dependencies (aiohttp, psutil).
"""

from __future__ import annotations

from mgpu.core.version import __version__

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: `import mgpu` stays cheap
if TYPE_CHECKING:
    from mgpu.client.client import SimpleClient
    from mgpu.core.models import JobProcess, JobState, MessageType, NodeInfo, SimpleJob
    from mgpu.node.manager import NodeManager, SimpleNode
    from mgpu.server.master import SimpleMaster

__all__ = [
    "JobProcess",
    "JobState",
    "MessageType",
    "NodeInfo",
    "NodeManager",
    "SimpleClient",
    "SimpleJob",
    "SimpleMaster",
    "SimpleNode",
    "__version__",
]

# public name -> the module that defines it
_HOMES = {
    "SimpleMaster": "mgpu.server.master",
    "SimpleNode": "mgpu.node.manager",
    "NodeManager": "mgpu.node.manager",
    "SimpleClient": "mgpu.client.client",
    "SimpleJob": "mgpu.core.models",
    "JobProcess": "mgpu.core.models",
    "NodeInfo": "mgpu.core.models",
    "JobState": "mgpu.core.models",
    "MessageType": "mgpu.core.models",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mgpu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
