"""``mgpu k8s render``: a job as the Kubernetes manifests that would run it.

``mgpu k8s render JOBID --image IMG`` renders a job the master knows (its command, GPUs,
time limit, directory; not its environment, which the master never hands back);
``mgpu k8s render --image IMG -- <submit flags> CMD ...`` renders what ``mgpu submit``
with those flags would queue, without a master. The mapping is :mod:`mgpu.core.k8s`'s and
``docs/kubernetes.md``'s. Output is a YAML stream of JSON documents (JSON is YAML), which
``kubectl apply -f -`` reads; ``--json`` prints one ``v1`` ``List`` instead.
"""

from __future__ import annotations

import os

from mgpu.core.errors import UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse

    from mgpu.core.k8s import KubeJob


def cmd_k8s(ns: argparse.Namespace) -> int:
    from mgpu.cli.shared import write
    from mgpu.core.k8s import render

    if not ns.image:
        raise UsageError("mgpu k8s render: give --image IMAGE (or set MGPU_K8S_IMAGE): "
                         "the container image the job runs in")
    if ns.nodes < 1:
        raise UsageError(f"--nodes must be 1 or more, not {ns.nodes}")
    if (ns.job_id is None) == (ns.submit_args is None):
        raise UsageError("mgpu k8s render: give a JOB_ID or --from-submit-args ... (one)")
    job = _from_submit(ns) if ns.submit_args is not None else _from_master(ns)
    try:
        objects = render(job)
    except ValueError as e:
        raise UsageError(f"mgpu k8s render: {e}") from None
    import json

    if ns.json:
        write(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        write("\n---\n".join(json.dumps(o, indent=2) for o in objects))
    return 0


def _kube(ns: argparse.Namespace, *, gpus: int, name: str, command: str,
          argv: list[str] | None, job_id: int | None = None, user: str = "",
          cwd: str | None = None, env: dict[str, str] | None = None,
          time_limit: int | None = None, nodes: int | None = None) -> KubeJob:
    """The job on ``nodes`` nodes (the job's own, else ``--nodes``): ``gpus`` is the whole
    job's (as ``-G 8 -N 2``), split evenly between its nodes."""
    from mgpu.core.k8s import KubeJob

    nodes = nodes if nodes and nodes > 1 else ns.nodes
    if gpus % nodes:
        raise UsageError(f"{gpus} GPUs do not split evenly over {nodes} nodes: give a "
                         "multiple of --nodes")
    return KubeJob(name=name, command=command, argv=argv, gpus=gpus // nodes,
                   nodes=nodes, job_id=job_id, user=user, cwd=cwd, env=env or {},
                   time_limit=time_limit or None, image=ns.image, namespace=ns.namespace,
                   queue=ns.queue, priority_class=ns.priority_class)


def _from_submit(ns: argparse.Namespace) -> KubeJob:
    from mgpu.cli.grammar import build_parser
    from mgpu.cli.jobargs import job_fields

    args = list(ns.submit_args)
    if args[:1] == ["--"]:
        args = args[1:]
    sub = build_parser("submit").parse_args(["submit", *args])
    if not sub.command:
        raise UsageError("mgpu k8s render --from-submit-args: give the command to run")
    f = job_fields(sub)
    # The submitter's whole environment is no image's business: only what was named.
    env = {k: v for k, v in f["env"].items() if os.environ.get(k) != v}
    name = f["name"] or (f["argv"] or f["cmd"].split() or ["job"])[0].rsplit("/", 1)[-1]
    return _kube(ns, name=name, command=f["cmd"], argv=f["argv"], gpus=f["gpus"],
                 cwd=f["cwd"] if sub.chdir else None, env=env, time_limit=f["time_limit"],
                 user=os.environ.get("USER", ""), nodes=f.get("nodes"))


def _from_master(ns: argparse.Namespace) -> KubeJob:
    from mgpu.cli.shared import client_for

    job = client_for(ns).get_job(ns.job_id)
    return _kube(ns, name=job.name, command=job.command, argv=job.argv, gpus=job.gpus,
                 job_id=job.id, user=job.user, cwd=job.cwd, time_limit=job.time_limit,
                 nodes=job.nodes)
