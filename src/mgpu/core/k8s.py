"""An mgpu job as Kubernetes manifests: what ``mgpu k8s render`` prints.

Pure: from a :class:`KubeJob` (what a job asks for, plus where it would run on Kubernetes)
to plain dicts, one per object, ready for JSON/YAML. The mapping (``docs/kubernetes.md``):

- A job becomes a ``batch/v1`` Job whose one container asks for ``nvidia.com/gpu`` (limits:
  the device plugin only honours limits). The time limit is ``activeDeadlineSeconds``;
  retries are ``backoffLimit``; the job is never restarted in place (``restartPolicy:
  Never``), as mgpu never reruns a command behind the user's back.
- With a Kueue queue, the Job carries ``kueue.x-k8s.io/queue-name`` and is created
  suspended: Kueue admits it (unsuspends it) when its ClusterQueue has quota, which is where
  mgpu's queue, priorities and fair share live on Kubernetes.
- A multi-node job (``nodes > 1``) is an Indexed Job of ``nodes`` pods, one per node, with a
  headless Service so that each pod has a stable name: rank 0's is ``MASTER_ADDR``, and
  ``RANK``/``NODE_RANK`` come from the pod's completion index.
- An array is an Indexed Job too, one index per task, ``parallelism`` its ``%N`` throttle; a
  small ``/bin/sh`` prologue turns the index into the task id (``MGPU_ARRAY_TASK_ID``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# torchrun's and torch.distributed's usual rendezvous port.
MASTER_PORT = 29500
# What the Job keeps after it ends before Kubernetes deletes it (its pods' logs go with it).
TTL_AFTER_FINISHED = 7 * 24 * 3600
LABEL = "mgpu.dev"
_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


@dataclass(frozen=True)
class KubeJob:
    """A job, as the manifests need it. ``gpus`` is per node (per pod)."""

    name: str
    command: str
    image: str
    argv: list[str] | None = None  # run without a shell (``command`` shows it joined)
    gpus: int = 1
    nodes: int = 1
    job_id: int | None = None
    user: str = ""
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    time_limit: int | None = None  # seconds; None or 0: none
    retries: int = 0
    namespace: str | None = None
    queue: str | None = None  # a Kueue LocalQueue
    priority_class: str | None = None
    array: list[int] | None = None  # the array's task ids
    array_max: int | None = None  # how many tasks may run at once (``%N``)


def object_name(job: KubeJob) -> str:
    """A DNS-1123 label for the Job (and its Service): ``mgpu-<id>-<name>``, lowercase, at
    most 52 characters so that an indexed pod's hostname (``<name>-<index>``) and the
    ``controller-uid``-style labels Kubernetes adds stay within 63."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job.name.lower()).strip("-") or "job"
    base = f"mgpu-{job.job_id}-{slug}" if job.job_id is not None else f"mgpu-{slug}"
    return base[:52].rstrip("-")


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:63].strip("._-")


def render(job: KubeJob) -> list[dict[str, Any]]:
    """The objects to create for ``job``, in creation order (the Service before the Job)."""
    if job.gpus < 0 or job.nodes < 1:
        raise ValueError("gpus must be >= 0 and nodes >= 1")
    if job.nodes > 1 and job.array:
        raise ValueError("a multi-node job cannot also be an array")
    name = object_name(job)
    labels = {"app.kubernetes.io/managed-by": "mgpu"}
    if job.job_id is not None:
        labels[f"{LABEL}/job-id"] = str(job.job_id)
    if job.user and label_value(job.user):
        labels[f"{LABEL}/user"] = label_value(job.user)
    objects: list[dict[str, Any]] = []
    if job.nodes > 1:
        objects.append(_service(name, job, labels))
    objects.append(_job(name, job, labels))
    return objects


def _metadata(name: str, job: KubeJob, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if job.namespace:
        meta["namespace"] = job.namespace
    return meta


def _service(name: str, job: KubeJob, labels: dict[str, str]) -> dict[str, Any]:
    """The headless Service giving each pod of a multi-node job a DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, job, labels),
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            # Rank 0 must be resolvable before it is ready: the others connect to it early.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "protocol": "TCP"}],
        },
    }


def _job(name: str, job: KubeJob, labels: dict[str, str]) -> dict[str, Any]:
    meta = _metadata(name, job, labels)
    meta["annotations"] = {f"{LABEL}/command": job.command}
    if job.queue:
        meta["labels"]["kueue.x-k8s.io/queue-name"] = job.queue
    spec: dict[str, Any] = {
        "backoffLimit": job.retries,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
        "template": {"metadata": {"labels": dict(labels)}, "spec": _pod(name, job)},
    }
    if job.time_limit:
        spec["activeDeadlineSeconds"] = job.time_limit
    if job.queue:
        spec["suspend"] = True  # Kueue unsuspends it when its quota admits it
    if job.nodes > 1:
        spec.update(completionMode="Indexed", completions=job.nodes, parallelism=job.nodes)
        # One rank failing fails the gang, as on mgpu's own nodes.
        spec["backoffLimit"] = 0
    elif job.array:
        tasks = len(job.array)
        spec.update(completionMode="Indexed", completions=tasks,
                    parallelism=min(job.array_max or tasks, tasks))
        spec["backoffLimitPerIndex"] = job.retries
        del spec["backoffLimit"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def _pod(name: str, job: KubeJob) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "job",
        "image": job.image,
        "env": _env(name, job),
    }
    command = list(job.argv) if job.argv else ["/bin/sh", "-c", job.command]
    if job.array:
        # JOB_COMPLETION_INDEX (0, 1, ...) -> the task id it stands for, then the command.
        prologue = (
            'i=0; for t in $MGPU_ARRAY_TASKS; do [ "$i" = "$JOB_COMPLETION_INDEX" ] && '
            "MGPU_ARRAY_TASK_ID=$t; i=$((i+1)); done; "
            "export MGPU_ARRAY_TASK_ID SLURM_ARRAY_TASK_ID=$MGPU_ARRAY_TASK_ID; exec \"$@\""
        )
        command = ["/bin/sh", "-c", prologue, "mgpu-array-task", *command]
    container["command"] = command
    if job.cwd:
        container["workingDir"] = job.cwd
    if job.gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": job.gpus}}
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if job.nodes > 1:
        pod["subdomain"] = name  # with the headless Service: <name>-<index>.<name>
    if job.priority_class:
        pod["priorityClassName"] = job.priority_class
    return pod


def _env(name: str, job: KubeJob) -> list[dict[str, Any]]:
    env: dict[str, Any] = dict(job.env)
    if job.job_id is not None:
        env["MGPU_JOB_ID"] = str(job.job_id)
    if job.nodes > 1:
        hosts = [f"{name}-{i}.{name}" for i in range(job.nodes)]
        env.update(
            MASTER_ADDR=hosts[0],
            MASTER_PORT=str(MASTER_PORT),
            WORLD_SIZE=str(job.nodes),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MGPU_NODELIST=",".join(hosts),
        )
    if job.array:
        env["MGPU_ARRAY_TASKS"] = " ".join(str(t) for t in job.array)
        if job.job_id is not None:
            env["MGPU_ARRAY_JOB_ID"] = env["SLURM_ARRAY_JOB_ID"] = str(job.job_id)
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    if job.nodes > 1:
        index = {"valueFrom": {"fieldRef": {"fieldPath": _INDEX}}}
        out += [{"name": "RANK", **index}, {"name": "NODE_RANK", **index}]
    return out
