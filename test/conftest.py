"""Shared fixtures for the integration and end-to-end tiers.

* :func:`wait_until` polls a condition; tests use it instead of fixed sleeps.
* :class:`Cluster` (fixtures ``cluster`` and ``make_cluster``) runs a real master and real
  node agents as child processes, the way a user starts them::

      python -m mgpu server --port 0 --data-dir TMP/master
      python -m mgpu node --node-id nodeK --master-host 127.0.0.1 --master-port PORT \
          --port 0 --fake-gpus G --data-dir TMP/nodeK

  Each runs in its own session with its output in ``TMP/logs/NAME.log``; the tails of the
  logs are attached to the report of a failing test. At teardown every process group (and
  every process a component started, jobs included) is stopped: SIGTERM, a grace period,
  SIGKILL. The test fails if a component exited on its own with a non-zero status, needed
  SIGKILL to stop, or logged a traceback (set ``cluster.allow_tracebacks = True`` in a test
  that provokes one on purpose).

``@pytest.mark.cluster(nodes=2, gpus=2)`` sizes the ``cluster`` fixture.

The master is found as docs/protocol.md says: ``TMP/master/master.json`` holds
``{"host", "port", "pid", "version"}`` once it listens, and ``GET /api/v1/nodes`` lists the
nodes that registered.

Security is on, as users get it: the master writes its admin token to
``TMP/home/config/mgpu/token`` (every component and command runs with ``XDG_CONFIG_HOME``
there, so ``cluster.mgpu(...)`` finds it with no set-up, as a user on the master's machine
does), nodes join with ``--join-token-file TMP/master/join.token``, and ``cluster.api()``
sends the token. ``cluster.token`` is that admin token; ``cluster.user_token(name)`` makes
another user's.

Every test also runs with its own ``XDG_CONFIG_HOME`` and ``XDG_DATA_HOME`` (and without
``MGPU_TOKEN``): nothing a test starts in-process reads or writes the real home's tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
START_TIMEOUT = 30.0  # a component listening / a node registered
STOP_GRACE = 15.0  # SIGTERM → exit, before SIGKILL
LOG_TAIL_LINES = 60


def wait_until(
    cond: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``cond`` until it returns something truthy, and return that.

    Exceptions of the types in ``ignore`` count as "not yet". After ``timeout`` seconds,
    fail with ``message`` (a string or a callable that builds one, e.g. with the state seen
    last), or with the condition's name.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = cond()
        except ignore as e:
            last_error = e
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            what = what or getattr(cond, "__name__", repr(cond))
            extra = f" (last error: {last_error!r})" if last_error is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


# ---------------------------------------------------------------- processes


@dataclass
class Component:
    """One child process: the master or a node agent."""

    name: str
    args: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    expected_exit: bool = False  # a test stopped it on purpose: any status is fine
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def remember_descendants(self) -> None:
        """Note every process it started (jobs run in sessions of their own)."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self.descendants.add(_note(child))

    def signal_group(self, sig: int) -> None:
        """Signal its process group, while its pid is still its own: once reaped, the pid
        (and so the group id) may be another process's (pids wrap around quickly here)."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


MARKER = "MGPU_TEST_CLUSTER"  # in every component's environment, and so its jobs'


def _kill_pids(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


_BORN: dict[int, float] = {}  # pid -> start time, of processes noted as a cluster's


def _note(proc: psutil.Process) -> int:
    with contextlib.suppress(psutil.Error):
        _BORN[proc.pid] = proc.create_time()
    return proc.pid


def _ours(pid: int, marker: str) -> bool:
    """``pid`` is alive and one of this cluster's processes (its environment says so, or
    it is the very process noted under that pid: a job's environment is its submitter's):
    a remembered pid may since have been given to another process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return (proc.environ().get(MARKER) == marker
                or _BORN.get(pid) == proc.create_time())
    except psutil.Error:
        return False


class Cluster:
    """A master and node agents running as real processes under ``tmp``."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.master_dir = tmp / "master"
        self.port = 0
        self.master: Component | None = None
        self.nodes: dict[str, Component] = {}
        self.stopped: list[Component] = []  # components that are no longer current
        self.allow_tracebacks = False
        self._tokens: dict[str, str] = {}
        self.tls = False  # the master serves HTTPS (master.json says so)
        self.ca: Path | None = None  # the CA that signed its certificate, for api()
        self._node_args: dict[str, list[str]] = {}
        self._log_counts: dict[str, int] = {}
        self.base_env = self._isolated_env(env or {})

    # ------------------------------------------------------------------ environment

    def _isolated_env(self, extra: dict[str, str]) -> dict[str, str]:
        """The environment of every component and command: no user config, no real data."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
        home = self.tmp / "home"
        for var, sub in (
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_STATE_HOME", "state"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_RUNTIME_DIR", "run"),
        ):
            path = home / sub
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            env[var] = str(path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONWARNINGS", None)
        env[MARKER] = str(self.tmp)
        if os.geteuid() == 0:  # CI runs as root: its jobs (owned by root) may run as root
            env["MGPU_ALLOW_ROOT_JOBS"] = "1"
        else:  # tests submit as other users too: a normal user's agent runs them as itself
            env["MGPU_ALLOW_OTHER_USERS"] = "1"
        env.update(extra)
        return env

    @property
    def master_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.master_addr}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for running ``mgpu`` against this cluster (MGPU_MASTER set; the
        admin token in the default token file of ``XDG_CONFIG_HOME``)."""
        return {**self.base_env, "MGPU_MASTER": self.master_addr}

    @property
    def token_file(self) -> Path:
        """Where the master wrote its admin token for the ``mgpu`` command."""
        return Path(self.base_env["XDG_CONFIG_HOME"]) / "mgpu" / "token"

    @property
    def join_token_file(self) -> Path:
        return self.master_dir / "join.token"

    @property
    def token(self) -> str:
        """The admin token (of the Unix user running the tests)."""
        return self.token_file.read_text().strip()

    def user_token(self, user: str, admin: bool = False) -> str:
        """A token for ``user`` (made once per cluster, through ``mgpu token create``)."""
        key = f"{user}{' admin' if admin else ''}"
        if key not in self._tokens:
            out = self.mgpu("token", "create", user, *(["--admin"] if admin else [])).stdout
            self._tokens[key] = out.strip()
        return self._tokens[key]

    # ------------------------------------------------------------------ starting

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None,
               wrap: tuple[str, ...] = ()) -> Component:
        """Start ``mgpu ARGS``; ``wrap`` goes in front (e.g. ``ip netns exec NS``)."""
        count = self._log_counts[name] = self._log_counts.get(name, 0) + 1
        log_path = self.log_dir / (f"{name}.log" if count == 1 else f"{name}.{count}.log")
        cmd = [*wrap, sys.executable, "-m", "mgpu", *args]
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.base_env, **(env or {})},
                cwd=self.tmp,
                start_new_session=True,
            )
        return Component(name, cmd, proc, log_path)

    def start_master(self, *args: str, env: dict[str, str] | None = None) -> Component:
        """Start the master (on the port it had before, if any) and wait until it listens."""
        assert self.master is None or not self.master.running(), "the master is running"
        if self.master is not None:
            self.stopped.append(self.master)
        info_path = self.master_dir / "master.json"
        with contextlib.suppress(FileNotFoundError):
            info_path.unlink()  # a stale file from the previous run must not be read
        argv = ["server", "--port", str(self.port), "--data-dir", str(self.master_dir), *args]
        master = self.master = self._spawn("master", argv, env)

        def listening() -> dict[str, Any] | None:
            self._check_alive(master, "while starting")
            try:
                info: dict[str, Any] = json.loads(info_path.read_text())
            except (FileNotFoundError, ValueError):
                return None
            return info if info.get("pid") == master.pid else None

        info = wait_until(listening, START_TIMEOUT, message=lambda: self._why(master))
        assert info is not None
        assert {"host", "port", "pid", "version"} <= set(info), info
        self.port = int(info["port"])
        self.tls = bool(info.get("tls"))
        return master

    def add_node(
        self,
        node_id: str | None = None,
        gpus: int = 4,
        *args: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        master_host: str = "127.0.0.1",
        wrap: tuple[str, ...] = (),
        join: bool = True,
    ) -> Component:
        """Start a node agent with ``gpus`` fake GPUs; by default wait until it is up.
        ``join=False`` leaves out ``--join-token-file`` (the node finds its secret, or not)."""
        assert self.port, "start the master first"
        node_id = node_id or f"node{len(self._node_args) + 1}"
        old = self.nodes.get(node_id)
        assert old is None or not old.running(), f"{node_id} is running"
        if old is not None:
            self.stopped.append(old)
        argv = [
            "node",
            "--node-id",
            node_id,
            "--master-host",
            master_host,
            "--master-port",
            str(self.port),
            "--port",
            "0",
            "--fake-gpus",
            str(gpus),
            "--data-dir",
            str(self.tmp / node_id),
            *(["--join-token-file", str(self.join_token_file)] if join else []),
            *args,
        ]
        self._node_args[node_id] = argv
        node = self.nodes[node_id] = self._spawn(node_id, argv, env, wrap)
        if wait:
            self.wait_nodes_up([node_id])
        return node

    def wait_nodes_up(self, node_ids: list[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until the master lists every running node (or those named) as up."""
        wanted = set(node_ids or [n for n, c in self.nodes.items() if c.running()])

        def all_up() -> bool:
            for comp in [self.master, *(self.nodes[n] for n in wanted)]:
                if comp is not None:
                    self._check_alive(comp, "while waiting for nodes")
            up = {n["node_id"] for n in self.api("/api/v1/nodes")["nodes"] if n["state"] == "up"}
            return wanted <= up

        wait_until(
            all_up,
            timeout,
            message=lambda: f"nodes {sorted(wanted)} to be up; {self._why(*self.current())}",
            ignore=(OSError,),
        )

    # ------------------------------------------------------------------ using it

    def api(self, path: str, body: Any = None, timeout: float = 10.0,
            token: str | None = None, raw: bool = False) -> Any:
        """GET (or POST ``body`` as JSON) ``path`` on the master with ``token`` (default:
        the admin token); the decoded JSON reply (the bytes with ``raw``).

        An error status raises ``urllib.error.HTTPError`` (an OSError).
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        context = ssl.create_default_context(cafile=self.ca) if self.tls else None
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            data = resp.read()
            return data if raw else json.loads(data or b"null")

    def status_of(self, path: str, body: Any = None, token: str | None = None, *,
                  data: bytes | None = None, headers: dict[str, str] | None = None,
                  timeout: float = 30.0) -> tuple[int, Any]:
        """(HTTP status, decoded JSON reply) of a request with exactly ``token`` (None: no
        Authorization header), ``body`` as JSON or ``data`` as it is; an error status is
        returned, not raised (``api`` raises it)."""
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        context = ssl.create_default_context(cafile=self.ca) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read() or b"null")

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as ``GET /api/v1/jobs/{id}`` returns it."""
        out: dict[str, Any] = self.api(f"/api/v1/jobs/{job_id}")
        return out

    def wait_job(self, job_id: int, states: tuple[str, ...] = (), timeout: float = 30.0) -> Any:
        """Wait until the job is in one of ``states`` (default: any ended state)."""
        ended = ("completed", "failed", "cancelled", "timeout", "node_fail")
        want = states or ended
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.job(job_id))
            return seen["state"] in want

        wait_until(
            reached,
            timeout,
            message=lambda: f"job {job_id} to be {'|'.join(want)} (last: {seen})",
            ignore=(OSError,),
        )
        return seen

    def mgpu(
        self,
        *args: str,
        input: str | None = None,
        check: bool | int = True,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m mgpu --master 127.0.0.1:PORT ARGS`` as a user would.

        ``check=True`` fails the test unless the exit status is 0, ``check=N`` unless it is
        N, ``check=False`` accepts any status.
        """
        cmd = [sys.executable, "-m", "mgpu", "--master", self.master_addr, *args]
        done = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=cwd or self.tmp,
            check=False,
        )
        want = 0 if check is True else check
        if check is not False and done.returncode != want:
            pytest.fail(
                f"`mgpu {' '.join(args)}` exited {done.returncode}, expected {want}\n"
                f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
            )
        return done

    def submit(self, command: str, *flags: str) -> int:
        """``mgpu submit --parsable FLAGS COMMAND``; the new job's id."""
        out = self.mgpu("submit", "--parsable", *flags, command).stdout.strip()
        return int(out.split(";")[0])

    # ------------------------------------------------------------------ failures

    def kill_master(self, sig: int = signal.SIGKILL, wait: bool = True) -> int | None:
        """Send ``sig`` to the master's process group; its exit is then not a failure."""
        assert self.master is not None
        return self._stop(self.master, sig, wait)

    def restart_master(self, *args: str, wait_nodes: bool = True) -> Component:
        """Stop the master (SIGTERM) if it runs, start it on the same port and data dir."""
        if self.master is not None and self.master.running():
            self.kill_master(signal.SIGTERM)
        master = self.start_master(*args)
        if wait_nodes:
            self.wait_nodes_up()
        return master

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL, wait: bool = True) -> int | None:
        """Send ``sig`` to a node agent's process group (its jobs, in their own sessions,
        keep running until teardown, as they would on a real machine)."""
        return self._stop(self.nodes[node_id], sig, wait)

    def restart_node(self, node_id: str, wait: bool = True) -> Component:
        """Start a stopped node again with the same arguments and data dir."""
        comp = self.nodes[node_id]
        if comp.running():
            self.kill_node(node_id, signal.SIGTERM)
        self.stopped.append(comp)
        argv = self._node_args[node_id]
        node = self.nodes[node_id] = self._spawn(node_id, argv, None)
        if wait:
            self.wait_nodes_up([node_id])
        return node

    def _stop(self, comp: Component, sig: int, wait: bool) -> int | None:
        comp.expected_exit = True
        comp.remember_descendants()
        comp.signal_group(sig)
        if not wait:
            return None
        try:
            return comp.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{comp.name} did not exit within {STOP_GRACE:g}s of signal {sig}")

    def current(self) -> list[Component]:
        return [c for c in [self.master, *self.nodes.values()] if c is not None]

    def all_components(self) -> list[Component]:
        return [*self.stopped, *self.current()]

    def _check_alive(self, comp: Component, when: str) -> None:
        if comp.proc.poll() is not None and not comp.expected_exit:
            pytest.fail(f"{comp.name} exited {comp.proc.returncode} {when}\n{self._why(comp)}")

    def _why(self, *comps: Component) -> str:
        return "\n".join(
            f"--- {c.name} (pid {c.pid}, exit {c.proc.poll()}) {c.log_path}\n{c.log_tail()}"
            for c in comps
        )

    def log_sections(self) -> list[tuple[str, str]]:
        return [
            (f"{c.name} log (pid {c.pid}, exit {c.proc.poll()})", c.log_tail())
            for c in self.all_components()
        ]

    # ------------------------------------------------------------------ teardown

    def close(self) -> list[str]:
        """Stop everything; the problems found (empty when all was well)."""
        problems: list[str] = []
        comps = self.all_components()
        for comp in comps:
            if comp.running():
                comp.remember_descendants()
            elif not comp.expected_exit and comp.proc.returncode != 0:
                problems.append(f"{comp.name} exited on its own with status {comp.proc.returncode}")
        live = [c for c in comps if c.running()]  # all at once: teardown stays fast
        for comp in live:
            comp.expected_exit = True  # from here on its exit is ours (close is idempotent)
            comp.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for comp in live:
            try:
                code = comp.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"{comp.name} did not exit within {STOP_GRACE:g}s of SIGTERM")
                comp.signal_group(signal.SIGKILL)
                code = comp.proc.wait()
            if code not in (0, -signal.SIGTERM):
                problems.append(f"{comp.name} exited with status {code} on SIGTERM")
        # Whatever the components started and left behind (jobs of killed nodes), and
        # anything left in their process groups: only processes of this cluster.
        marker = str(self.tmp)
        groups = {c.pid for c in comps}
        with contextlib.suppress(psutil.Error):
            for proc in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(proc.pid) in groups:
                        comps[0].descendants.add(proc.pid)
        leftover = {pid for c in comps for pid in c.descendants if _ours(pid, marker)}
        # A stopped agent leaves its keeper and jobs running (they are in sessions of their
        # own); a keeper found again by a later agent is no child of it: take in whatever
        # they started since they were noted.
        for proc in psutil.process_iter(["cmdline"]):  # the keepers of this cluster's nodes
            cmd = proc.info["cmdline"] or []
            if "mgpu.node.keeper" in cmd and cmd[-1].startswith(marker + os.sep):
                leftover.add(_note(proc))
        for pid in list(leftover):
            with contextlib.suppress(psutil.Error):
                leftover.update(_note(p) for p in psutil.Process(pid).children(recursive=True))
        _kill_pids(leftover, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.wait_procs([psutil.Process(p) for p in leftover if _ours(p, marker)],
                              timeout=5)
        stubborn = {p for p in leftover if _ours(p, marker)}
        _kill_pids(stubborn, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):  # SIGKILL is sent at once, not yet done
            psutil.wait_procs([psutil.Process(p) for p in stubborn if _ours(p, marker)],
                              timeout=5)
        self._sweep_keepers(marker)
        for comp in comps:
            if comp.proc.poll() is None:
                comp.proc.wait()
        if not self.allow_tracebacks:
            for comp in comps:
                with contextlib.suppress(OSError):
                    if "Traceback (most recent call last)" in comp.log_path.read_text(
                        errors="replace"
                    ):
                        problems.append(f"{comp.name} logged a traceback")
        return problems


    @staticmethod
    def _sweep_keepers(marker: str, timeout: float = 10.0) -> None:
        """Last: no keeper of this cluster may outlive it, whether an agent started it in the
        meantime (a stopping agent restarts a keeper it finds dead) or a signal has not yet
        taken effect. SIGKILL and wait, until none is left (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            rest = []
            for proc in psutil.process_iter(["cmdline"]):
                cmd = proc.info["cmdline"] or []
                with contextlib.suppress(psutil.Error):
                    if ("mgpu.node.keeper" in cmd and cmd[-1].startswith(marker + os.sep)
                            and proc.status() != psutil.STATUS_ZOMBIE):
                        rest.append(proc)
            if not rest or time.monotonic() > deadline:
                return
            for proc in rest:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(rest, timeout=1)


# ---------------------------------------------------------------- fixtures

CLUSTERS = pytest.StashKey[list[Cluster]]()
SUMMARY: list[str] = []  # lines for the end of the run (e.g. fuzz case counts)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("mgpu")
        for line in SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real home's mgpu tokens, data or config."""
    home = tmp_path_factory.mktemp("home")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        path = home / var.lower()
        path.mkdir(mode=0o700)
        monkeypatch.setenv(var, str(path))
    for var in ("MGPU_TOKEN", "MGPU_JOIN_TOKEN", "MGPU_JOIN_TOKEN_FILE", "MGPU_CA", "MGPU_TLS",
                "MGPU_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster(nodes=1, gpus=4): size of the `cluster` fixture's cluster"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach every cluster component's log tail to the report of a failed test."""
    report: pytest.TestReport = yield
    if report.failed and report.when in ("setup", "call"):
        for cluster in item.stash.get(CLUSTERS, []):
            for title, text in cluster.log_sections():
                report.sections.append((title, text))
    return report


@pytest.fixture
def account() -> Iterator[str]:
    """A fresh Unix account for the test, removed afterwards (skipped unless root can make
    one with ``useradd``)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("running jobs as another user needs a root agent and useradd")
    name = f"mgpu{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a user here: {made.stderr.decode().strip()}")
    try:
        yield name
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """A factory: ``make_cluster(nodes=2, gpus=4, master_args=(), env={})`` → Cluster."""
    clusters: list[Cluster] = []
    request.node.stash[CLUSTERS] = clusters

    def make(
        nodes: int = 1,
        gpus: int = 4,
        master_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Cluster:
        tmp = tmp_path / f"cluster{len(clusters)}" if clusters else tmp_path
        cluster = Cluster(tmp, env)
        clusters.append(cluster)
        cluster.start_master(*master_args)
        for _ in range(nodes):
            cluster.add_node(gpus=gpus, wait=False)
        if nodes:
            cluster.wait_nodes_up()
        return cluster

    yield make

    reports = []
    for c in clusters:
        problems = c.close()
        if problems:
            reports.append("\n".join(["", *problems, c._why(*c.all_components())]))
    if reports:
        pytest.fail("cluster teardown found problems:" + "\n".join(reports), pytrace=False)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, make_cluster: Callable[..., Cluster]) -> Cluster:
    """A running cluster: one master and (by default) one node with 4 fake GPUs."""
    marker = request.node.get_closest_marker("cluster")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return make_cluster(**options)


# ---------------------------------------------------------------- a real SLURM


def running_slurm(prefix: str, make: Callable[[Path], Any],
                  programs: tuple[str, ...] = ()) -> Iterator[Any]:
    """A real SLURM (``test/slurm_cluster.py``), ``make(root)`` in a fresh directory that
    every user may enter (jobs' owners' sbatch reads its configuration too): started,
    yielded, stopped. Root only (skipped, saying so, otherwise); a missing program
    (SLURM's, or one of ``programs``) fails with the fix."""
    import tempfile

    from slurm_cluster import missing_programs

    if os.geteuid() != 0:
        pytest.skip("a real SLURM needs root (slurmd starts jobs as their users); CI runs "
                    "these as root")
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = missing_programs() + [p for p in programs if shutil.which(p, path=path) is None]
    if missing:
        pytest.fail(f"SLURM programs missing: {', '.join(missing)}: run .ci/system-packages")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    cluster = make(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def emptied_slurm(cluster: Any) -> None:
    """Cancel every job of ``cluster`` and wait until SLURM has none left (between tests)."""
    cluster.cancel_all()

    def squeue(*args: str) -> str:
        return subprocess.run(["squeue", *args], env=cluster.env, capture_output=True,
                              text=True, check=True, timeout=30).stdout

    wait_until(lambda: not squeue("-h", "-t", "PD,R,CG").strip(), 30,
               message=lambda: f"SLURM still has jobs:\n{squeue()}")


SLURM2_NODES, SLURM2_GPUS_PER_NODE = 2, 4  # the two-node SLURM's shape


@pytest.fixture(scope="session")
def slurm_session() -> Iterator[Any]:
    """One real single-host SLURM for the session (one node, 8 GPUs). Shared by
    test_slurm.py, test_mixed.py, test_slurm_queue.py and test_slurm_rest.py."""
    from slurm_cluster import SlurmCluster

    yield from running_slurm("mgpu-slurm-", SlurmCluster)


@pytest.fixture
def slurm(slurm_session: Any) -> Iterator[Any]:
    """The session's SLURM, with no job left over from another test."""
    yield slurm_session
    emptied_slurm(slurm_session)


@pytest.fixture(scope="session")
def slurm2_session() -> Iterator[Any]:
    """A real SLURM of two nodes on this host (several slurmd: test/slurm_cluster.py), for
    the session, started only when a test asks for it (multi-node jobs in SLURM)."""
    from slurm_cluster import SlurmCluster

    yield from running_slurm("mgpu-slurm2-", lambda root: SlurmCluster(
        root, nodes=SLURM2_NODES, gpus_per_node=SLURM2_GPUS_PER_NODE))


@pytest.fixture
def slurm2(slurm2_session: Any) -> Iterator[Any]:
    """The two-node SLURM, with no job left over from another test."""
    yield slurm2_session
    emptied_slurm(slurm2_session)
