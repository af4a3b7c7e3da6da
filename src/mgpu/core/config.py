"""Configuration: frozen dataclasses, one precedence order, and where each value came from.

Precedence, highest first: command-line flag > ``MGPU_*`` environment variable > TOML file >
default. The file is ``$MGPU_CONFIG`` if set, else ``$XDG_CONFIG_HOME/mgpu/config.toml``
(``~/.config/mgpu/config.toml``); its tables are ``[master]``, ``[node]``, ``[client]``,
``[log]`` and ``[backend]``, with the field names below as keys. ``mgpu config`` prints the
effective values.

The rule itself and ``HOST:PORT`` live in :mod:`mgpu.core.config_sources`. This module
reads nothing: the environment, the file and the defaults that depend on them (the data
directories under ``$XDG_DATA_HOME``) are :mod:`mgpu.utils.settings`'s ``load``.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgpu.core.config_sources import DEFAULT_PORT, parse_hostport
from mgpu.core.errors import ConfigError
from mgpu.core.partitions import check_name

DEFAULT_NODE_PORT = 8081


def _env(name: str, *, secret: bool = False) -> dict[str, Any]:
    """Field metadata: its environment variable; ``secret`` hides its value in ``mgpu config``."""
    return {"env": name, "secret": True} if secret else {"env": name}


FOREIGN_GPU_POLICIES = ("avoid", "ignore")


def check_slurm_rest(url: str | None, name: str) -> None:
    """A :class:`ConfigError` unless slurmrestd's address ``url`` (setting ``name``) is
    None, ``unix:/absolute/path`` or ``http(s)://host:port``."""
    if url is None:
        return
    if url.startswith("unix:"):
        if not url[5:].startswith("/"):
            raise ConfigError(f"{name} is {url!r}: a unix socket needs an absolute path "
                              "(unix:/run/slurmrestd/slurmrestd.socket)")
    elif not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ConfigError(f"{name} is {url!r}: give slurmrestd's address as "
                          "unix:/path/to/slurmrestd.socket or http://host:6820")


def check_gpu_policy(policy: str | None, min_free_mib: int | None) -> None:
    """A :class:`ConfigError` unless ``foreign_gpu_policy`` is avoid or ignore (or None) and
    ``min_free_mib`` is 0 or more (or None)."""
    if policy is not None and policy not in FOREIGN_GPU_POLICIES:
        raise ConfigError(f"foreign_gpu_policy (MGPU_FOREIGN_GPU_POLICY) is {policy!r}: "
                          "use avoid (GPUs busy outside mgpu are not allocated) or ignore")
    if min_free_mib is not None and min_free_mib < 0:
        raise ConfigError(f"min_free_mib (MGPU_MIN_FREE_MIB) is {min_free_mib}: give 0 (no "
                          "minimum) or more MiB")


@dataclass(frozen=True)
class MasterConfig:
    """The master: where it listens, where it keeps its data, how it watches nodes."""

    host: str = field(default="127.0.0.1", metadata=_env("MGPU_HOST"))
    port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_PORT"))
    # Its default, $XDG_DATA_HOME/mgpu/master, depends on the environment: load() gives it.
    data_dir: Path = field(kw_only=True, metadata=_env("MGPU_DATA_DIR"))
    node_timeout: float = field(default=10.0, metadata=_env("MGPU_NODE_TIMEOUT"))
    heartbeat_interval: float = field(default=2.0, metadata=_env("MGPU_HEARTBEAT_INTERVAL"))
    max_request_bytes: int = field(default=8 * 1024 * 1024, metadata=_env("MGPU_MAX_REQUEST"))
    default_time_limit: str = field(default="UNLIMITED",
                                    metadata=_env("MGPU_DEFAULT_TIME_LIMIT"))
    max_time_limit: str = field(default="UNLIMITED", metadata=_env("MGPU_MAX_TIME_LIMIT"))
    max_requeue: int = field(default=3, metadata=_env("MGPU_MAX_REQUEUE"))
    srun_grace: float = field(default=10.0, metadata=_env("MGPU_SRUN_GRACE"))
    # The scheduling policy: the built-in "multifactor" (priority, one reservation, backfill)
    # or "fifo-reserve", or a plugin's name (an entry point of the group "mgpu.schedulers":
    # core/scheduler.py's load_policy).
    scheduler: str = field(default="multifactor", metadata=_env("MGPU_SCHEDULER"))
    # Priority (README "How scheduling works"): age + fair share + --priority/--nice, each
    # with its weight; the age factor reaches 1 at priority_max_age; fair-share usage halves
    # every fairshare_half_life. Backfill tries at most backfill_depth jobs past the first
    # blocked one per pass.
    priority_weight_age: float = field(default=1000.0,
                                       metadata=_env("MGPU_PRIORITY_WEIGHT_AGE"))
    priority_weight_fairshare: float = field(default=10_000.0,
                                             metadata=_env("MGPU_PRIORITY_WEIGHT_FAIRSHARE"))
    priority_weight_job: float = field(default=1.0, metadata=_env("MGPU_PRIORITY_WEIGHT_JOB"))
    priority_max_age: str = field(default="7-00:00:00", metadata=_env("MGPU_PRIORITY_MAX_AGE"))
    fairshare_half_life: str = field(default="7-00:00:00",
                                     metadata=_env("MGPU_FAIRSHARE_HALF_LIFE"))
    backfill_depth: int = field(default=1000, metadata=_env("MGPU_BACKFILL_DEPTH"))
    # Security (README "Security"): off only for benchmarks, and loudly.
    auth: bool = field(default=True, metadata=_env("MGPU_AUTH"))
    private_jobs: bool = field(default=False, metadata=_env("MGPU_PRIVATE_JOBS"))
    tls_cert: Path | None = field(default=None, metadata=_env("MGPU_TLS_CERT"))
    tls_key: Path | None = field(default=None, metadata=_env("MGPU_TLS_KEY"))
    # Limits against hostile or broken clients.
    max_batch_jobs: int = field(default=10_000, metadata=_env("MGPU_MAX_BATCH"))
    max_pending_per_user: int = field(default=100_000, metadata=_env("MGPU_MAX_PENDING"))
    read_timeout: float = field(default=30.0, metadata=_env("MGPU_READ_TIMEOUT"))
    audit_days: float = field(default=365.0, metadata=_env("MGPU_AUDIT_DAYS"))
    # Ended jobs (their command, environment, output) are kept this long, then pruned to an
    # accounting row (0: kept forever).
    job_retention_days: float = field(default=30.0, metadata=_env("MGPU_JOB_RETENTION_DAYS"))
    # A cap on the database's size, in SQLite pages of 4 KiB (0: none): for testing a full
    # disk, or bounding the database.
    db_max_pages: int = field(default=0, metadata=_env("MGPU_DB_MAX_PAGES"))
    # A TOML file of node pools that grow and shrink with the queue (server/pools.py).
    pools: Path | None = field(default=None, metadata=_env("MGPU_POOLS"))
    # Job controls: a job with --retries N waits retry_backoff seconds before its first
    # retry, twice that before the next, ..., never more than retry_backoff_max.
    retry_backoff: float = field(default=10.0, metadata=_env("MGPU_RETRY_BACKOFF"))
    retry_backoff_max: float = field(default=600.0, metadata=_env("MGPU_RETRY_BACKOFF_MAX"))
    # Prometheus scraping of /metrics (README "Metrics"): with a metrics token, a request
    # that presents it (Authorization: Bearer); without one, requests from loopback only.
    # metrics_token_file wins over metrics_token.
    metrics_token: str | None = field(default=None,
                                      metadata=_env("MGPU_METRICS_TOKEN", secret=True))
    metrics_token_file: Path | None = field(default=None,
                                            metadata=_env("MGPU_METRICS_TOKEN_FILE"))
    # GPUs busy outside mgpu (README "GPUs as they are"): "avoid" allocates no GPU that a
    # process mgpu did not start computes on; "ignore" allocates it anyway. Either way a
    # GPU with less free memory than min_free_mib (0: no minimum) is not allocated. A node
    # may set its own.
    foreign_gpu_policy: str = field(default="avoid", metadata=_env("MGPU_FOREIGN_GPU_POLICY"))
    min_free_mib: int = field(default=0, metadata=_env("MGPU_MIN_FREE_MIB"))

    # Notifications (README "Notifications"): mail through this SMTP server (none: jobs may
    # not ask for mail), and JSON webhooks, sent in the background with retries.
    smtp_host: str | None = field(default=None, metadata=_env("MGPU_SMTP_HOST"))
    smtp_port: int = field(default=25, metadata=_env("MGPU_SMTP_PORT"))
    smtp_from: str = field(default="mgpu@localhost", metadata=_env("MGPU_SMTP_FROM"))
    smtp_user: str | None = field(default=None, metadata=_env("MGPU_SMTP_USER"))
    smtp_password: str | None = field(default=None,
                                      metadata=_env("MGPU_SMTP_PASSWORD", secret=True))
    smtp_starttls: bool = field(default=False, metadata=_env("MGPU_SMTP_STARTTLS"))
    # Hosts webhooks may go to, comma-separated (``*.example.org`` for its subdomains);
    # none: any http(s) host. Other URL schemes are always refused.
    notify_hosts: str | None = field(default=None, metadata=_env("MGPU_NOTIFY_HOSTS"))
    notify_retries: int = field(default=5, metadata=_env("MGPU_NOTIFY_RETRIES"))
    notify_backoff: float = field(default=2.0, metadata=_env("MGPU_NOTIFY_BACKOFF"))
    notify_timeout: float = field(default=10.0, metadata=_env("MGPU_NOTIFY_TIMEOUT"))
    notify_queue: int = field(default=10_000, metadata=_env("MGPU_NOTIFY_QUEUE"))
    # The master's address as people reach it, for links in notifications (default: the
    # address it listens on).
    public_url: str | None = field(default=None, metadata=_env("MGPU_PUBLIC_URL"))

    # Partitions (README "Mixed mode"): jobs without -p may also run on the nodes of these
    # partitions (comma-separated, or a TOML list; e.g. "slurm") once they have waited
    # spill_after seconds and no node of the default partition can start them.
    spill_partitions: str | None = field(default=None, metadata=_env("MGPU_SPILL_PARTITIONS"))
    spill_after: float = field(default=0.0, metadata=_env("MGPU_SPILL_AFTER"))

    def __post_init__(self) -> None:
        check_gpu_policy(self.foreign_gpu_policy, self.min_free_mib)


@dataclass(frozen=True)
class NodeConfig:
    """A node agent: who it is, which master it joins, which GPUs it offers."""

    node_id: str = field(default_factory=socket.gethostname, metadata=_env("MGPU_NODE_ID"))
    master_host: str = field(default="localhost", metadata=_env("MGPU_MASTER_HOST"))
    master_port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_MASTER_PORT"))
    port: int = field(default=DEFAULT_NODE_PORT, metadata=_env("MGPU_NODE_PORT"))
    host: str = field(default="127.0.0.1", metadata=_env("MGPU_NODE_HOST"))
    gpus: str | None = field(default=None, metadata=_env("MGPU_GPUS"))
    # A count (4) or N:TYPE[:MEM] groups (4:A100:80G): mgpu.utils.gpu.parse_fake_spec.
    fake_gpus: int | str | None = field(default=None, metadata=_env("MGPU_FAKE_GPUS"))
    data_dir: Path | None = field(default=None, metadata=_env("MGPU_NODE_DATA_DIR"))
    kill_grace: float = field(default=30.0, metadata=_env("MGPU_KILL_GRACE"))
    fence_timeout: float | None = field(default=None, metadata=_env("MGPU_FENCE_TIMEOUT"))
    fence_on_disconnect: bool = field(default=False, metadata=_env("MGPU_FENCE_ON_DISCONNECT"))
    # The master's join secret: --join-token-file wins over MGPU_JOIN_TOKEN; with neither,
    # the default master data dir's join.token when readable (a node on the master's machine).
    join_token_file: Path | None = field(default=None, metadata=_env("MGPU_JOIN_TOKEN_FILE"))
    join_token: str | None = field(default=None,
                                   metadata=_env("MGPU_JOIN_TOKEN", secret=True))
    ca: Path | None = field(default=None, metadata=_env("MGPU_CA"))
    tls: bool = field(default=False, metadata=_env("MGPU_TLS"))
    allow_root_jobs: bool = field(default=False, metadata=_env("MGPU_ALLOW_ROOT_JOBS"))
    # Output kept per job run on the node; past it the rest is discarded, the log says so at
    # its end and the job goes on running. 0: no cap.
    max_output_mib: int = field(default=1024, metadata=_env("MGPU_MAX_OUTPUT_MIB"))
    # Whose jobs it runs (see mgpu.node.users): a root agent runs every user's jobs under
    # their own accounts; an agent that is not root runs jobs as itself, so by default only
    # its own user's, unless allow_other_users. ``users`` (comma-separated) narrows either.
    allow_other_users: bool = field(default=False, metadata=_env("MGPU_ALLOW_OTHER_USERS"))
    users: str | None = field(default=None, metadata=_env("MGPU_NODE_USERS"))
    # A stopping agent (SIGTERM, SIGINT) leaves its jobs with the keeper, which a new agent
    # re-adopts within the fence time; with this, it ends them first.
    kill_jobs_on_exit: bool = field(default=False, metadata=_env("MGPU_KILL_JOBS_ON_EXIT"))
    # The node pool it was started for (server/pools.py): a pool's scale_up command sets it.
    pool: str | None = field(default=None, metadata=_env("MGPU_NODE_POOL"))
    # The address other nodes reach this one at: a multi-node job's MASTER_ADDR when its rank
    # 0 runs here (None: the address its link to the master leaves from).
    address: str | None = field(default=None, metadata=_env("MGPU_NODE_ADDRESS"))
    # The agent's own Prometheus /metrics, on ``host`` (None: off; 0: any free port, said in
    # node.json), scraped as the master's is: with the metrics token, else loopback only.
    metrics_port: int | None = field(default=None, metadata=_env("MGPU_METRICS_PORT"))
    metrics_token: str | None = field(default=None,
                                      metadata=_env("MGPU_METRICS_TOKEN", secret=True))
    metrics_token_file: Path | None = field(default=None,
                                            metadata=_env("MGPU_METRICS_TOKEN_FILE"))
    # GPU usage (README "GPUs as they are"): sampled this often (0: never; not reported);
    # fake GPUs read theirs from the JSON file fake_gpu_state (mgpu.utils.gpustate). The
    # node's own foreign_gpu_policy / min_free_mib (None: the master's).
    gpu_sample_interval: float = field(default=2.0, metadata=_env("MGPU_GPU_SAMPLE_INTERVAL"))
    fake_gpu_state: Path | None = field(default=None, metadata=_env("MGPU_FAKE_GPU_STATE"))
    foreign_gpu_policy: str | None = field(default=None,
                                           metadata=_env("MGPU_FOREIGN_GPU_POLICY"))
    min_free_mib: int | None = field(default=None, metadata=_env("MGPU_MIN_FREE_MIB"))

    # What runs the jobs: "local" (this machine's keeper) or "slurm" (a bridge: each job is
    # sbatch'ed into SLURM, into ``partition`` when set; squeue asked every ``slurm_poll``
    # seconds; see mgpu.node.slurm).
    backend: str = field(default="local", metadata=_env("MGPU_NODE_BACKEND"))
    partition: str | None = field(default=None, metadata=_env("MGPU_SLURM_PARTITION"))
    slurm_poll: float = field(default=2.0, metadata=_env("MGPU_SLURM_POLL"))
    # Queue in SLURM (a bridge): jobs wait in SLURM's queue, their dependencies, holds and
    # begin times SLURM's own (README "Queue in SLURM"; mgpu.node.slurm_queue).
    slurm_queue: bool = field(default=False, metadata=_env("MGPU_SLURM_QUEUE"))
    # Its partition in mgpu (README "Mixed mode"; not SLURM's ``partition``): jobs with
    # -p NAME run only on its nodes. None: a SLURM bridge's is "slurm", a local node's the
    # default partition ("" names the default partition for a bridge too).
    mgpu_partition: str | None = field(default=None, metadata=_env("MGPU_NODE_PARTITION"))
    # A SLURM bridge's transport (README "SLURM through slurmrestd"): None, SLURM's commands
    # (sbatch, squeue, scancel); else slurmrestd at this address ("unix:/path/to.sock" or
    # "http://host:port"), with the JWT of slurm_jwt_file (wins) or slurm_jwt, if any.
    slurm_rest: str | None = field(default=None, metadata=_env("MGPU_SLURM_REST"))
    slurm_jwt: str | None = field(default=None, metadata=_env("MGPU_SLURM_JWT", secret=True))
    slurm_jwt_file: Path | None = field(default=None, metadata=_env("MGPU_SLURM_JWT_FILE"))

    def __post_init__(self) -> None:
        check_gpu_policy(self.foreign_gpu_policy, self.min_free_mib)
        check_name(self.mgpu_partition, "mgpu_partition (--mgpu-partition)")
        check_slurm_rest(self.slurm_rest, "slurm_rest (--slurm-rest, MGPU_SLURM_REST)")

    @property
    def effective_data_dir(self) -> Path:
        """``data_dir``, which ``load()`` fills when no setting gives one (its default,
        ``$XDG_DATA_HOME/mgpu/node-NODE_ID``, depends on the environment)."""
        if self.data_dir is None:
            raise ConfigError("NodeConfig has no data_dir: give one, or build it with "
                              "mgpu.utils.settings.load")
        return self.data_dir


@dataclass(frozen=True)
class ClientConfig:
    """Where the client finds the master, and how it checks it is the real one (TLS).

    The token is not a setting here: ``--token-file``, else ``$MGPU_TOKEN``, else
    ``$XDG_CONFIG_HOME/mgpu/token`` (``mgpu.client.auth``).
    """

    master_host: str = field(default="localhost", metadata=_env("MGPU_MASTER_HOST"))
    master_port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_MASTER_PORT"))
    timeout: float = field(default=30.0, metadata=_env("MGPU_TIMEOUT"))
    ca: str | None = field(default=None, metadata=_env("MGPU_CA"))  # verify the master's TLS
    tls: bool = field(default=False, metadata=_env("MGPU_TLS"))  # https (implied by ``ca``)


@dataclass(frozen=True)
class BackendConfig:
    """What runs the jobs of ``mgpu server`` itself (README "Mixed mode"): with ``kind``
    "slurm" the master runs a SLURM bridge node in its own process (``node_id``), which
    sbatch'es jobs into SLURM's ``partition`` (None: SLURM's default) and is in mgpu's
    partition ``mgpu_partition``. "none": the master runs no node of its own."""

    kind: str = field(default="none", metadata=_env("MGPU_BACKEND"))
    node_id: str = field(default="slurm", metadata=_env("MGPU_BACKEND_NODE_ID"))
    partition: str | None = field(default=None, metadata=_env("MGPU_SLURM_PARTITION"))
    mgpu_partition: str = field(default="slurm", metadata=_env("MGPU_BACKEND_PARTITION"))
    slurm_poll: float = field(default=2.0, metadata=_env("MGPU_SLURM_POLL"))
    slurm_queue: bool = field(default=False, metadata=_env("MGPU_SLURM_QUEUE"))  # (as [node])
    # The bridge's runs and SLURM's output files (None: the master's data dir's "backend").
    # Jobs that run as their users write there: as root, give one every user may enter.
    data_dir: Path | None = field(default=None, metadata=_env("MGPU_BACKEND_DATA_DIR"))
    # The bridge's transport, as NodeConfig's: SLURM's commands, or slurmrestd (and a JWT).
    slurm_rest: str | None = field(default=None, metadata=_env("MGPU_SLURM_REST"))
    slurm_jwt: str | None = field(default=None, metadata=_env("MGPU_SLURM_JWT", secret=True))
    slurm_jwt_file: Path | None = field(default=None, metadata=_env("MGPU_SLURM_JWT_FILE"))

    def __post_init__(self) -> None:
        if self.kind not in ("none", "slurm"):
            raise ConfigError(f"[backend] kind (MGPU_BACKEND, --backend) is {self.kind!r}: use "
                              "slurm (the master runs a SLURM bridge) or none")
        check_name(self.mgpu_partition, "[backend] mgpu_partition (--mgpu-partition)")
        check_slurm_rest(self.slurm_rest, "[backend] slurm_rest (--slurm-rest, "
                         "MGPU_SLURM_REST)")


@dataclass(frozen=True)
class LogConfig:
    level: str = field(default="info", metadata=_env("MGPU_LOG_LEVEL"))
    file: Path | None = field(default=None, metadata=_env("MGPU_LOG_FILE"))
    format: str = field(default="text", metadata=_env("MGPU_LOG_FORMAT"))


SECTIONS: dict[type[Any], str] = {
    MasterConfig: "master",
    NodeConfig: "node",
    ClientConfig: "client",
    LogConfig: "log",
    BackendConfig: "backend",
}


def describe(cfg: Any, sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """Rows of (name, value, source) for ``mgpu config``."""
    return [
        (f.name, _shown(cfg, f), sources.get(f.name, "default"))
        for f in dataclasses.fields(cfg)
    ]


def _shown(cfg: Any, f: dataclasses.Field[Any]) -> str:
    value = getattr(cfg, f.name)
    if f.metadata.get("secret") and value is not None:
        return "(set)"
    return str(value)


__all__ = [
    "DEFAULT_NODE_PORT",
    "DEFAULT_PORT",
    "SECTIONS",
    "BackendConfig",
    "ClientConfig",
    "LogConfig",
    "MasterConfig",
    "NodeConfig",
    "describe",
    "parse_hostport",
]
