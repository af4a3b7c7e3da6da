"""A real single-host SLURM for the SLURM backend's tests: munged, slurmctld and slurmd.

Everything lives in one temporary directory: ``slurm.conf`` (cgroup-free plugins:
``proctrack/linuxproc``, ``task/none``, no accounting), ``gres.conf`` (8 GPUs as ``File=``
entries pointing at dummy device files, so SLURM sets ``CUDA_VISIBLE_DEVICES``; plain files
where this machine may not make device files: SLURM then counts them but names none), a fresh
munge key, and the daemons' state, spool, pid and log files. The daemons run in the
foreground in one process group, which :meth:`SlurmCluster.stop` signals (SIGTERM, then
SIGKILL). Clients find the cluster through ``SLURM_CONF`` (:attr:`SlurmCluster.env`).

Several SLURM nodes on this one host (``SlurmCluster(root, nodes=2, gpus_per_node=4)``, for
multi-node jobs): one ``slurmd -N NAME`` each, with its own ``Port=`` on its ``NodeName``
line, its own spool, pid and log files (``%n`` in their paths) and its own dummy GPU files;
``srun -N 2`` then runs one task in each (``SLURMD_NODENAME`` differs).

The daemons need root (slurmd starts each job as its user). Use from the command line::

    python test/slurm_cluster.py DIR [NODES]   # start it, print the environment, run until ^C
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

NODE = "mgpu-slurm1"  # the one node of the default cluster (nodes=1)
PARTITION = "gpu"
GPUS = 8  # its GPUs
CPUS = 16  # declared (config_overrides): jobs are not held back by this machine's cores
START_TIMEOUT = 60.0  # until sinfo says the node is idle
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def missing_programs() -> list[str]:
    """The SLURM and munge programs not on PATH (``.ci/system-packages`` installs them)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_started(cond: Callable[[], bool], procs: list[subprocess.Popen[bytes]],
                 timeout: float, what: str) -> str | None:
    """Until ``cond()`` holds (None), or why a daemon of ``procs`` did not start: it exited,
    or no ``what`` after ``timeout``. ``cond`` asks the daemon itself (SLURM's commands,
    slurmrestd's socket), so it is polled every 0.1 s. (Not conftest's ``wait_until``:
    this file also runs alone, as ``python test/slurm_cluster.py DIR``.)"""
    deadline = time.monotonic() + timeout
    while not cond():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            return f"{dead[0].args[0]} exited with {dead[0].returncode}"
        if time.monotonic() > deadline:
            return f"no {what} after {timeout:g}s"
        time.sleep(0.1)
    return None


class SlurmError(RuntimeError):
    """The cluster did not come up; the message holds the daemons' log tails."""


class SlurmCluster:
    """A single-host SLURM in ``root``: :meth:`start` it, use :attr:`env`, :meth:`stop` it."""

    def __init__(self, root: Path, nodes: int = 1, gpus_per_node: int = GPUS) -> None:
        self.root = root.absolute()
        # The SLURM nodes: the default cluster's one keeps its name; several are NODE-1, ...
        self.nodes = [NODE] if nodes == 1 else [f"mgpu-slurm-n{i + 1}" for i in range(nodes)]
        self.gpus_per_node = gpus_per_node
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.sock"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pgid = 0
        # The GPUs are device files (SLURM then sets CUDA_VISIBLE_DEVICES), else plain ones.
        self.gpu_files = True

    @property
    def env(self) -> dict[str, str]:
        """The environment of a SLURM client of this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def write_config(self) -> None:
        """Write slurm.conf, gres.conf, the munge key and the dummy GPU device files."""
        for sub in ("state", "spool", "log", "munge", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "munge").chmod(0o755)  # its socket serves every user's commands
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        gpus = self.gpus_per_node
        for i in range(gpus * len(self.nodes)):  # character devices (like /dev/null), as
            dev = self.root / "dev" / f"nvidia{i}"  # slurmd wants; each node its own
            if dev.exists():
                continue
            try:
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except PermissionError:  # (no CAP_MKNOD): plain files, which slurmd counts
                dev.touch()  # but names to no job (it logs that they are no devices)
                self.gpu_files = False
        r = self.root
        self.conf.write_text(f"""\
ClusterName=mgpu
SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
GresTypes=gpu
ReturnToService=2
MinJobAge=600
KillWait=2
InactiveLimit=0
{"".join(self._node_line(name) for name in self.nodes)}\
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        (self.root / "gres.conf").write_text("".join(
            f"NodeName={name} Name=gpu File={r}/dev/nvidia[{i * gpus}-{(i + 1) * gpus - 1}]\n"
            for i, name in enumerate(self.nodes)))
        # Each slurmd's spool (%n) holds the job scripts its jobs' users run: they may enter.
        (self.root / "spool").chmod(0o755)
        for name in self.nodes:
            (self.root / "spool" / name).mkdir(exist_ok=True, mode=0o755)

    def _node_line(self, name: str) -> str:
        """A node's line of slurm.conf: with several on this host, each slurmd listens on a
        port of its own."""
        port = f" Port={_free_port()}" if len(self.nodes) > 1 else ""
        return (f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={name}{port} CPUs={CPUS} "
                f"RealMemory=4096 Gres=gpu:{self.gpus_per_node} State=UNKNOWN\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the child's
        with log:
            # One process group for the daemons: stop() signals it.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                cwd=self.root, close_fds=True,
                process_group=self.pgid,  # (0: a new group, led by the first daemon)
            )
        if not self.pgid:
            self.pgid = proc.pid
        self.procs.append(proc)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle, or raise
        :class:`SlurmError` (after stopping what started) with the logs."""
        if os.geteuid() != 0:
            raise SlurmError("a SLURM cluster needs root (slurmd runs jobs as their users)")
        self.write_config()
        m = self.root / "munge"
        try:
            self._spawn("munged", [
                "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
            self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait(self._answers, timeout, "slurmctld to answer")
            for name in self.nodes:
                self._spawn("slurmd" if len(self.nodes) == 1 else f"slurmd-{name}",
                            ["slurmd", "-D", "-N", name, "-f", str(self.conf)])
            self._wait(self.idle, timeout, "every node to be idle")
        except BaseException:
            self.stop()
            raise

    def stop_controller(self) -> None:
        """Stop slurmctld alone (SLURM's commands then fail: "Unable to contact")."""
        ctld = next(p for p in self.procs if p.args[0] == "slurmctld" and p.poll() is None)
        ctld.terminate()
        ctld.wait(30)
        self.procs.remove(ctld)

    def start_controller(self, timeout: float = START_TIMEOUT) -> None:
        """Start slurmctld again (it reloads its saved state); return once it answers."""
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(self._answers, timeout, "slurmctld to answer")

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        why = wait_started(cond, self.procs, timeout, what)
        if why is not None:
            raise SlurmError(f"SLURM did not start: {why}\n{self.logs()}")

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=20,
                              check=False)

    def _answers(self) -> bool:
        return self._run("scontrol", "ping").stdout.count("UP") > 0

    def idle(self) -> bool:
        """Whether sinfo says every node is idle (they take jobs)."""
        out = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return out == ["idle"] * len(self.nodes)

    def logs(self, lines: int = 30) -> str:
        """The tails of the daemons' logs."""
        parts = []
        for path in [*sorted((self.root / "log").iterdir()), self.root / "munge/munged.log"]:
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def cancel_all(self) -> None:
        """Cancel every job the cluster holds (between tests)."""
        self._run("scancel", "--full", "-p", PARTITION)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the daemons' process group: SIGTERM, then SIGKILL after ``grace``."""
        if not self.pgid:
            return
        self.cancel_all()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.pgid = 0


def main() -> None:
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cluster = SlurmCluster(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("slurm"), nodes,
                           GPUS // nodes)
    cluster.start()
    stops = {signal.SIGINT, signal.SIGTERM}
    # Kept for sigwait (a SIGTERM would otherwise kill this process and leave the daemons
    # running); only now, as the daemons would inherit the blocked signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.sigwait(stops)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
