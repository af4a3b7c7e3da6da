"""``mgpu k8s render``: the manifests validate against Kubernetes' published schema.

The schema is the one the ``kubernetes-validate`` package carries for each Kubernetes
release (pinned in ``.ci/constraints.txt``), checked strictly: an unknown field is an error,
as the API server's strict field validation would make it. No ``kubectl`` runs offline
(``kubectl apply --dry-run=client`` still asks a server for its API list), so the schema is
the check. The array prologue is run for real by ``/bin/sh``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from conftest import SRC, Cluster
from mgpu.core.k8s import KubeJob, object_name, render

K8S_VERSION = "1.33.0"  # a release current clusters run; the schema is strict


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def container(job: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return c


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def mgpu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    full["PYTHONPATH"] = str(SRC)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "mgpu", *args], capture_output=True,
                          text=True, env=full, timeout=60, check=False)


def stream(text: str) -> list[dict[str, Any]]:
    """The documents of the YAML stream ``render`` prints (each one JSON)."""
    return [json.loads(doc) for doc in text.split("\n---\n")]


def test_a_one_node_job_is_a_valid_batch_job_with_its_gpus_limit_and_time() -> None:
    job = KubeJob(name="Train ResNet!", command="python train.py --lr 0.1", image="img:1",
                  gpus=2, job_id=42, user="alice", cwd="/data", env={"SEED": "1"},
                  time_limit=3600, retries=2, namespace="lab", queue="lab-queue",
                  priority_class="high")
    objects = render(job)
    assert [o["kind"] for o in objects] == ["Job"]
    (obj,) = objects
    validate(obj)
    assert obj["metadata"]["name"] == "mgpu-42-train-resnet" == object_name(job)
    assert obj["metadata"]["namespace"] == "lab"
    assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-queue"
    assert obj["metadata"]["labels"]["mgpu.dev/user"] == "alice"
    spec = obj["spec"]
    assert spec["suspend"] is True  # Kueue admits it
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 2
    c = container(obj)
    assert c["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert c["command"] == ["/bin/sh", "-c", "python train.py --lr 0.1"]
    assert c["workingDir"] == "/data"
    assert env_of(obj) == {"SEED": "1", "MGPU_JOB_ID": "42"}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["priorityClassName"] == "high"


def test_the_schema_check_catches_a_broken_manifest() -> None:
    """The check can fail: an unknown field, a wrong type."""
    (obj,) = render(KubeJob(name="x", command="true", image="img"))
    bad = copy.deepcopy(obj)
    bad["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    bad = copy.deepcopy(obj)
    bad["spec"]["backoffLimit"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_a_multi_node_job_is_an_indexed_job_with_a_headless_service_for_rank_0() -> None:
    job = KubeJob(name="ddp", command="torchrun train.py", argv=["torchrun", "train.py"],
                  image="pytorch:2", gpus=4, nodes=3, job_id=7)
    objects = render(job)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    for o in objects:
        validate(o)
    kinds = by_kind(objects)
    name = object_name(job)
    svc = kinds["Service"]["spec"]
    assert svc["clusterIP"] == "None" and svc["selector"] == {"job-name": name}
    spec = kinds["Job"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", 3, 3)
    assert spec["template"]["spec"]["subdomain"] == name
    env = env_of(kinds["Job"])
    assert env["MASTER_ADDR"] == f"{name}-0.{name}"  # pod <job>-<index> in the Service
    assert env["WORLD_SIZE"] == "3" and env["MASTER_PORT"] == "29500"
    assert env["MGPU_NODELIST"].split(",") == [f"{name}-{i}.{name}" for i in range(3)]
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["RANK"] == env["NODE_RANK"] == {"fieldRef": {"fieldPath": index}}
    assert container(kinds["Job"])["command"] == ["torchrun", "train.py"]
    assert container(kinds["Job"])["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_an_array_runs_each_index_as_its_task_id(tmp_path: Path) -> None:
    """The pod's prologue, run by a real /bin/sh, maps the completion index to the task."""
    job = KubeJob(name="sweep", command='echo "task $MGPU_ARRAY_TASK_ID"', image="img",
                  job_id=12, array=[1, 3, 5, 6, 7], array_max=2)
    (obj,) = render(job)
    validate(obj)
    spec = obj["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", 5, 2)
    env = env_of(obj)
    assert env["MGPU_ARRAY_JOB_ID"] == "12"
    seen = []
    for index in range(5):
        run_env = {**{k: v for k, v in env.items() if isinstance(v, str)},
                   "JOB_COMPLETION_INDEX": str(index), "PATH": os.environ["PATH"]}
        done = subprocess.run(container(obj)["command"], env=run_env, capture_output=True,
                              text=True, check=True, cwd=tmp_path)
        seen.append(done.stdout.strip())
    assert seen == [f"task {t}" for t in (1, 3, 5, 6, 7)]


def test_render_from_submit_args_prints_a_stream_kubectl_reads() -> None:
    done = mgpu("k8s", "render", "--image", "pytorch:2", "--nodes", "2", "--queue", "q",
                "--from-submit-args", "-G", "8", "-t", "2:00:00", "-J", "train",
                "--env", "LR=0.1", "python", "train.py")
    assert done.returncode == 0, done.stderr
    objects = stream(done.stdout)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    for o in objects:
        validate(o)
    job = by_kind(objects)["Job"]
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 4  # 8 over 2 nodes
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert env_of(job)["LR"] == "0.1"
    assert "PATH" not in env_of(job)  # the submitter's environment stays here

    listed = mgpu("k8s", "render", "--json", "--from-submit-args", "true",
                  env={"MGPU_K8S_IMAGE": "busybox"})
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["kind"] == "List" and container(doc["items"][0])["image"] == "busybox"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--from-submit-args", "true"], "--image"),
        (["--image", "i"], "JOB_ID or --from-submit-args"),
        (["--image", "i", "--nodes", "2", "--from-submit-args", "-G", "3", "true"],
         "split evenly"),
        (["--image", "i", "--from-submit-args", "-G", "1"], "command"),
    ],
)
def test_bad_render_requests_say_what_to_give(args: list[str], words: str) -> None:
    done = mgpu("k8s", "render", *args)
    assert done.returncode == 2, done
    assert words in done.stderr


def test_render_a_queued_job_from_the_master(cluster: Cluster) -> None:
    job_id = cluster.mgpu("submit", "--parsable", "-G", "2", "-t", "10", "-J", "fit",
                          "--", "sleep", "1000").stdout.strip()
    done = cluster.mgpu("k8s", "render", job_id, "--image", "img", "--namespace", "lab")
    (obj,) = stream(done.stdout)
    validate(obj)
    assert obj["metadata"]["name"] == f"mgpu-{job_id}-fit"
    assert obj["metadata"]["labels"]["mgpu.dev/job-id"] == job_id
    assert container(obj)["command"] == ["sleep", "1000"]
    assert container(obj)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert obj["spec"]["activeDeadlineSeconds"] == 600
    cluster.mgpu("cancel", job_id)


def test_render_takes_the_node_count_of_the_submit_args_too() -> None:
    done = mgpu("k8s", "render", "--image", "pytorch:2", "--from-submit-args", "-N", "3",
                "--gpus-per-node", "2", "torchrun", "train.py")
    assert done.returncode == 0, done.stderr
    job = by_kind(stream(done.stdout))["Job"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == 2
