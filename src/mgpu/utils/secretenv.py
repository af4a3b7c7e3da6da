"""mgpu's own secrets among environment variables, kept out of what a job inherits.

A job submitted with the submitter's whole environment (``--export=ALL``, the default)
would otherwise carry the submitter's token (``MGPU_TOKEN``) and, on a node's machine, the
cluster's join secret (``MGPU_JOIN_TOKEN``) to the master, into its database, to the node
and into every process of the job. :func:`is_secret` says which names are such secrets:
``MGPU_`` names that end in ``_TOKEN``, ``_SECRET``, ``_PASSWORD``, ``_CREDENTIAL`` or
``_JWT`` (``MGPU_SLURM_JWT``), so that a secret added later is covered by its name alone (a
``_FILE`` that only points at a secret, such as ``MGPU_JOIN_TOKEN_FILE``, is not one).
Nothing is imported: the ``mgpu submit`` path uses this (start-up time).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping

_SECRET_ENDINGS = ("_TOKEN", "_SECRET", "_PASSWORD", "_CREDENTIAL", "_JWT")


def is_secret(name: str) -> bool:
    """Whether environment variable ``name`` holds one of mgpu's own secrets."""
    return name.startswith("MGPU_") and name.endswith(_SECRET_ENDINGS)


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without mgpu's own secrets (:func:`is_secret`)."""
    return {k: v for k, v in environ.items() if not is_secret(k)}
