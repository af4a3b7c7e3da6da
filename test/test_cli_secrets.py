"""mgpu's own secrets stay out of the jobs a user submits (issue 9, defect 10, client side).

``--export=ALL`` (the default) gives a job the submitter's environment: without care, that
copies ``MGPU_TOKEN`` and ``MGPU_JOIN_TOKEN`` into the master's database, to the node and
into every process of the job. End to end on a real cluster (tier 3), and the rule itself
(tier 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import Cluster
from mgpu.cli.jobargs import job_env
from mgpu.core import config
from mgpu.core.errors import UsageError
from mgpu.utils.secretenv import is_secret, without_secrets

SECRETS = ("MGPU_TOKEN", "MGPU_JOIN_TOKEN")


def _stored(data_dir: Path) -> bytes:
    """The master's database as bytes, its write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("mgpu.db*")))


def test_export_all_leaves_out_mgpus_own_secrets(cluster: Cluster) -> None:
    token = cluster.token  # valid: the submit authenticates with it
    join = cluster.join_token_file.read_text().strip()
    env = {"MGPU_TOKEN": token, "MGPU_JOIN_TOKEN": join, "MGPU_TEST_KEPT": "yes"}

    plain = int(cluster.mgpu("submit", "--parsable", "/usr/bin/env", env=env).stdout)
    listed = int(cluster.mgpu("submit", "--parsable", "--export=ALL,EXTRA=1", "/usr/bin/env",
                              env=env).stdout)
    cluster.mgpu("wait", str(plain), str(listed))
    outputs = [cluster.mgpu("logs", str(j)).stdout.splitlines() for j in (plain, listed)]
    outputs.append(cluster.mgpu("srun", "-q", "/usr/bin/env", env=env).stdout.splitlines())
    for lines in outputs:
        assert "MGPU_TEST_KEPT=yes" in lines  # the rest of the environment still goes
        leaked = [line for line in lines if line.startswith(tuple(f"{s}=" for s in SECRETS))]
        assert not leaked, leaked
    assert "EXTRA=1" in outputs[1]
    stored = _stored(cluster.master_dir)
    assert b"MGPU_TEST_KEPT" in stored  # the environments were saved, without the secrets
    assert token.encode() not in stored and join.encode() not in stored


def test_a_secret_named_on_the_command_line_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """ALL leaves them out; naming one is an error that says what to do instead (the
    master would drop it: it never stores or passes on a secret)."""
    monkeypatch.setenv("MGPU_TOKEN", "t0ken")
    monkeypatch.setenv("MGPU_JOIN_TOKEN", "j0in")
    monkeypatch.setenv("MGPU_TEST_KEPT", "yes")
    everything = job_env([], [])
    assert everything["MGPU_TEST_KEPT"] == "yes"
    assert not everything.keys() & set(SECRETS)
    for exports, envs in ((["ALL,MGPU_TOKEN"], []), ([], ["MGPU_JOIN_TOKEN=given"]),
                          (["NONE,MGPU_TOKEN"], [])):
        with pytest.raises(UsageError, match="never gives its own secrets to a job"):
            job_env(exports, envs)


def test_every_secret_setting_is_known_as_one() -> None:
    """A setting that ``mgpu config`` hides as secret is also kept from jobs."""
    hidden = {
        f.metadata["env"]
        for cls in (config.MasterConfig, config.NodeConfig, config.ClientConfig,
                    config.LogConfig)
        for f in dataclasses.fields(cls)
        if f.metadata.get("secret")
    }
    assert hidden  # the join secret at least
    for name in hidden | set(SECRETS):
        assert is_secret(name), name
    for name in ("MGPU_JOIN_TOKEN_FILE", "MGPU_TLS_KEY", "MGPU_MASTER", "MGPU_JOB_ID",
                 "MY_TOKEN", "MGPU_TOKENS_DIR"):
        assert not is_secret(name), name
    assert without_secrets({"MGPU_TOKEN": "t", "MGPU_X": "1"}) == {"MGPU_X": "1"}


def test_the_python_api_leaves_out_mgpus_own_secrets_too(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from mgpu import SimpleClient

    monkeypatch.setenv("MGPU_JOIN_TOKEN", "join-secret-from-api")
    monkeypatch.setenv("MGPU_API_PLAIN", "kept")
    with SimpleClient("127.0.0.1", cluster.port, token=cluster.token) as client:
        job_id = client.submit_job(gpus=1, cmd="env")
        client.wait(job_id, timeout=30)
        out = client.logs(job_id)
    assert "MGPU_API_PLAIN=kept" in out
    assert "join-secret-from-api" not in out
