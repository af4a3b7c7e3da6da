"""The arguments of the commands that run or administer mgpu rather than a job: ``server``,
``node``, ``up``, ``token``, ``events``, ``certs``, ``drain``, ``resume``, ``k8s``
(:data:`mgpu.cli.grammar.COMMANDS`).
"""

from __future__ import annotations

import os

from mgpu.cli.argtypes import count, days, fake_gpus, job_id, port_number, positive, seconds
from mgpu.cli.plainargs import REMAINDER

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse


def server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, help="port to listen on (default 8080; 0: any)")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="... and this private key")


def gpu_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpus", metavar="0,1", help="the GPU indices to offer (default: all)")
    g.add_argument("--fake-gpus", type=fake_gpus, metavar="N[:TYPE[:MEM]]",
                   help="declare N fake GPUs, optionally of a type and memory (4:A100:80G)")


def master_args(p: argparse.ArgumentParser) -> None:
    server_args(p)
    p.add_argument("--node-timeout", type=seconds, metavar="S", help="mark a silent node lost")
    p.add_argument("--job-retention-days", type=days, metavar="DAYS",
                   help="keep ended jobs this long, then only their accounting (default 30)")
    p.add_argument("--pools", metavar="TOML",
                   help="node pools that grow and shrink with the queue (README \"Node pools\")")
    spill_args(p)
    metrics_token_arg(p)


def node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-id", metavar="ID", help="default: the host name")
    p.add_argument("--master-host", metavar="HOST")
    p.add_argument("--master-port", type=port_number, metavar="PORT")
    p.add_argument("--port", type=port_number, help="the agent's health port")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--join-token-file", metavar="PATH",
                   help="the master's join secret (else $MGPU_JOIN_TOKEN, else the local "
                   "master's, when readable)")
    p.add_argument("--max-output-mib", type=count, metavar="MIB",
                   help="cut a job's output past this size (default 1024; 0: no cap)")
    p.add_argument("--kill-jobs-on-exit", action="store_true", default=None,
                   help="end the jobs when the agent stops (default: they run on, for the "
                   "next agent to re-adopt within the fence time)")
    p.add_argument("--pool", metavar="NAME", help="the node pool this node was started for")
    p.add_argument("--address", metavar="ADDR",
                   help="the address other nodes reach this one at (a multi-node job's "
                   "MASTER_ADDR; default: the address its link to the master leaves from)")
    users_args(p)
    gpu_args(p)
    p.add_argument("--metrics-port", type=port_number, metavar="PORT",
                   help="serve Prometheus /metrics on this port (default: off; 0: any)")
    metrics_token_arg(p)


def metrics_token_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-token-file", metavar="PATH",
                   help="scrapes of /metrics must send this token (default: only from this "
                   "machine)")
    backend_args(p)


def backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "slurm"),
                   help="what runs the jobs: this machine (local, the default) or SLURM "
                   "(the node is a bridge that sbatch'es each job)")
    p.add_argument("--partition", metavar="P",
                   help="slurm: the partition to submit to (default: SLURM's default)")
    p.add_argument("--slurm-poll", type=seconds, metavar="S",
                   help="slurm: ask squeue about the jobs every S seconds (default 2)")
    p.add_argument("--slurm-queue", action="store_true", default=None,
                   help="slurm: hand jobs to SLURM's queue at once; dependencies, holds and "
                   "--begin become SLURM's own (README \"Queue in SLURM\")")
    p.add_argument("--slurm-rest", metavar="URL",
                   help="slurm: ask slurmrestd at URL (unix:/path/to.sock or "
                   "http://host:6820) instead of running sbatch, squeue and scancel")
    p.add_argument("--slurm-jwt-file", metavar="PATH",
                   help="slurm: the JWT slurmrestd gets (read at each request; default: "
                   "MGPU_SLURM_JWT, else none: rest_auth/local)")
    p.add_argument("--mgpu-partition", metavar="NAME",
                   help="the node's partition in mgpu: jobs with -p NAME run only there "
                   "(default: slurm for a SLURM bridge, else the default partition)")


def spill_args(p: argparse.ArgumentParser) -> None:
    """The master's spill-over flags (README "Mixed mode")."""
    p.add_argument("--spill-to", metavar="P[,P2]",
                   help="jobs without -p may also run in these partitions when no node of "
                   "the default partition can start them (e.g. slurm)")
    p.add_argument("--spill-after", type=seconds, metavar="S",
                   help="... once they have waited S seconds (default 0)")


def token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("create", "list", "revoke"),
                   help="create USER [--admin] | list | revoke USER|ID")
    p.add_argument("name", nargs="?", metavar="USER|ID")
    p.add_argument("--admin", action="store_true", help="create: an admin's token")
    p.add_argument("--json", action="store_true")


def events_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=positive, default=50, metavar="N",
                   help="the last N entries (default 50)")
    p.add_argument("--node", metavar="NODE",
                   help="NODE's entries only: its joins, and the warnings and errors it logged")
    p.add_argument("--json", action="store_true")


def certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR",
                   help="where to write them (default ~/.local/share/mgpu/tls)")
    p.add_argument("--host", action="append", metavar="NAME",
                   help="a name or address clients use for the master (repeatable; "
                   "default: this host's name, localhost, 127.0.0.1)")


def users_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", metavar="A,B",
                   help="run only these users' jobs (default: all when root, else your own)")
    p.add_argument("--allow-other-users", action="store_true", default=None,
                   help="not root: run other users' jobs too, as your own account")


def up_args(p: argparse.ArgumentParser) -> None:
    server_args(p)
    p.add_argument("--node-id", metavar="ID", help="default: the host name")
    users_args(p)
    gpu_args(p)
    backend_args(p)


# name -> (handler, one-line help, adds the subcommand's own arguments)


def drain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE")
    p.add_argument("--reason", metavar="TEXT", help="why (shown in `mgpu nodes`)")


def resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE")


def k8s_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["render"], help="render: print the manifests")
    p.add_argument("job_id", type=job_id, nargs="?", metavar="JOB_ID",
                   help="a job the master knows (or give --from-submit-args)")
    p.add_argument("--image", metavar="IMAGE", default=os.environ.get("MGPU_K8S_IMAGE"),
                   help="the container image the job runs in (or MGPU_K8S_IMAGE)")
    p.add_argument("--namespace", metavar="NS")
    p.add_argument("--queue", metavar="LOCALQUEUE",
                   help="the Kueue LocalQueue to submit to (the Job is created suspended)")
    p.add_argument("--nodes", type=int, metavar="N", default=1,
                   help="run on N nodes (an Indexed Job with a headless Service); -G is "
                   "the whole job's GPUs, split evenly")
    p.add_argument("--priority-class", metavar="NAME")
    p.add_argument("--json", action="store_true", help="one v1 List instead of a YAML stream")
    p.add_argument("--from-submit-args", dest="submit_args", nargs=REMAINDER, metavar="ARGS",
                   help="render what `mgpu submit ARGS` would queue, instead of a queued job")
