"""SLURM through slurmrestd, SLURM's REST daemon: the SLURM bridge's second transport.

:class:`SlurmRest` does what :class:`~mgpu.node.slurm_submit.SlurmCommands` does (submit,
query, cancel, hold, release, count a partition's GPUs) over slurmrestd's OpenAPI ``v0.0.38`` (SLURM
22.05's, as Debian 12 ships it), so :class:`~mgpu.node.slurm.SlurmLink` runs the same with
either; :func:`transport_of` picks one from the bridge's settings (``slurm_rest``).

* submit: ``POST /slurm/v0.0.38/job/submit`` with ``{"job": {...}, "script": ...}``
  (:func:`~slurm_rest_map.submit_body`: what ``sbatch`` gets, by slurmrestd's names);
* query: ``GET /slurm/v0.0.38/job/{id}`` for each job (the path takes one id); ``GET
  /slurm/v0.0.38/jobs`` (every job of the cluster) only when the bridge looks for a lost
  submission by its comment. :func:`~slurm_rest_map.job_of` reads an answer's job as ``squeue``'s.
* cancel: ``DELETE /slurm/v0.0.38/job/{id}`` (SLURM's cancel: SIGTERM, then SIGKILL after
  its KillWait), with ``?signal=N`` to send signal N to all the job's processes; an array's
  task is ``{id}_{task}`` there, as in every path below;
* a partition's nodes and GPUs: ``GET /slurm/v0.0.38/nodes``, the gres of its nodes;
* for the queue-in-SLURM mode (:mod:`slurm_queue`): hold and release, ``POST
  /slurm/v0.0.38/job/{id}`` with ``{"hold": true}`` / ``{"hold": false}`` (slurmctld
  reads a hold asked as root or SlurmUser as ``JobHeldAdmin``, as ``scontrol hold``; one
  submitted held is ``JobHeldUser``); an array's tasks, ``GET /slurm/v0.0.38/job/{id}`` of
  its id (:func:`~slurm_rest_map.task_rows`: a started task has a row of its own,
  ``array_job_id`` and ``array_task_id``; the pending ones share one,
  ``array_task_string`` ``2-3%2``).

Whom jobs run as (slurmrestd authenticates each request one of two ways):

* ``rest_auth/local`` (a unix socket, no JWT given): slurmrestd acts as its own user, so
  every job runs as slurmrestd's user. A root bridge submits a user's job as that user
  (:func:`~mgpu.node.slurm_cli.account_of`, as with ``sbatch``); here it cannot, and the job
  fails with the fix rather than run as someone else.
* ``rest_auth/jwt`` (a JWT given: ``X-SLURM-USER-TOKEN``): each request names its user
  (``X-SLURM-USER-NAME``): a job's owner when the bridge is root, else the token's own user
  (its ``sun`` claim). slurmctld lets a token of root or SlurmUser act as any user, and
  another user's token only as that user. The token is read again for each request, so a
  renewed ``--slurm-jwt-file`` is used without a restart.

A failure is a :class:`~mgpu.node.slurm_cli.SlurmError` with SLURM's words, ``unreachable``
when SLURM cannot be asked now (slurmrestd does not answer, refuses the bridge's
credentials or an expired JWT, or says that slurmctld does not answer): the bridge is then
degraded and tries again, as when ``squeue`` finds no controller.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import os
import pwd
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from mgpu.core.config import NodeConfig
from mgpu.node import slurm_cli as sc
from mgpu.node.slurm_rest_map import job_of, nodes_gpus, nodes_of, submit_body, task_rows
from mgpu.node.slurm_submit import SlurmCommands, SlurmTransport, Submission

API = "/slurm/v0.0.38"
NO_SUCH_JOB = 2017  # ESLURM_INVALID_JOB_ID: "Invalid job id specified"
CONNECTIONS = 8  # requests in flight at once (slurmrestd serves 20 by default)
LOCAL_ONLY = ("slurmrestd without a JWT (rest_auth/local) submits every job as slurmrestd's "
              "own user, so it cannot run {user}'s job as {user}: give the bridge a JWT of "
              "root or SlurmUser (--slurm-jwt-file, MGPU_SLURM_JWT; `scontrol token "
              "username=root`, with AuthAltTypes=auth/jwt in slurm.conf), or run the bridge "
              "as the user its jobs run as")
ALT_USER = (" (slurmctld takes a JWT that acts for another user only from root or "
            "SlurmUser: give the bridge such a token)")


def address_of(url: str) -> tuple[str, str | None]:
    """slurmrestd's address (``unix:/path`` or ``http(s)://host:port``) as the base URL of
    its requests and the unix socket to reach it by (None: TCP)."""
    if url.startswith("unix:"):
        return "http://localhost", url[len("unix:"):]
    return url.rstrip("/"), None


def _unreachable(code: int) -> bool:
    """Whether slurmrestd's error number says slurmctld did not answer: SLURM's
    communication errors (1000-1099, 1800-1899), and -1, which v0.0.38's job and config
    reads give when they could not reach slurmctld (or it refused the credentials)."""
    return code == -1 or 1000 <= code < 1100 or 1800 <= code < 1900


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (slurmctld checks its signature); {} if unreadable."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


class SlurmRest:
    """SLURM through slurmrestd at ``url``, as the JWT of ``jwt_file`` (wins) or ``jwt``
    says (none: ``rest_auth/local``, slurmrestd's own user)."""

    def __init__(self, url: str, jwt: str | None = None, jwt_file: Path | None = None,
                 timeout: float = sc.TIMEOUT) -> None:
        self.url = url
        self.base, self.socket = address_of(url)
        self.jwt = jwt
        self.jwt_file = jwt_file
        self.timeout = timeout

    # ------------------------------------------------------------------ the three requests

    async def submit(self, sub: Submission) -> int:
        """Submit, as the submission's account (see the module's "Whom jobs run as")."""
        token = self._token()
        if token is None and sub.account is not None:
            raise sc.SlurmError(LOCAL_ONLY.format(user=sub.account.pw_name))
        user = sub.account.pw_name if sub.account is not None else None
        try:
            answer = await self._one("POST", "/job/submit", token, user, submit_body(sub))
        except sc.SlurmError as e:
            if token is None or user in (None, self._own_user(token)) or e.unreachable:
                raise
            raise sc.SlurmError(e.message + ALT_USER) from None
        if not _taken(answer):
            raise sc.SlurmError(f"slurmrestd ({self.url}) answered no job id: "
                                f"{json.dumps(answer)[:300]}")
        return int(answer["job_id"])

    async def query(self, ids: list[int]) -> dict[int, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids`` (all its jobs when empty)."""
        token = self._token()
        if not ids:
            answer = await self._one("GET", "/jobs", token)
            return {j.id: j for j in map(job_of, answer.get("jobs") or [])}
        jobs = map(job_of, await self._jobs(ids, token))
        return {j.id: j for j in jobs if j.id in ids}

    async def query_tasks(self, ids: list[int]) -> dict[sc.TaskKey, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids``, an array's tasks apart (``GET job/{id}``
        of an array's id lists all its tasks)."""
        rows: dict[sc.TaskKey, sc.SlurmJob] = {}
        for rec in await self._jobs(ids, self._token()):
            job = job_of(rec)
            for key in task_rows(rec):
                if key[0] in ids:
                    rows[key] = dataclasses.replace(job, id=key[0])
        return rows

    async def cancel(self, ids: Sequence[int | str], signal: int | None = None) -> None:
        """Cancel the jobs (or, with ``signal``, send it to all their processes)."""
        query = f"?signal={signal}" if signal else ""
        await self._each("DELETE", [f"/job/{i}{query}" for i in ids])

    async def hold(self, ids: Sequence[int | str]) -> None:
        """Hold the pending jobs (see the module docstring for SLURM's reason)."""
        await self._each("POST", [f"/job/{i}" for i in ids], {"hold": True})

    async def release(self, ids: Sequence[int | str]) -> None:
        """Release held jobs."""
        await self._each("POST", [f"/job/{i}" for i in ids], {"hold": False})

    async def partition_gpus(self, partition: str | None) -> int:
        """The GPUs of the partition's nodes, as slurmrestd's ``nodes`` lists them."""
        return nodes_gpus(await self._one("GET", "/nodes", self._token()), partition)

    async def partition_nodes(self, partition: str | None) -> dict[str, int]:
        """The partition's nodes and their GPUs, as slurmrestd's ``nodes`` lists them."""
        return nodes_of(await self._one("GET", "/nodes", self._token()), partition)

    # ------------------------------------------------------------------ HTTP

    def _token(self) -> str | None:
        """The JWT to send (None: none configured), read anew each time; an expired one is
        an ``unreachable`` error naming the fix (SLURM would refuse it with no reason)."""
        token = self.jwt
        if self.jwt_file is not None:
            try:
                token = self.jwt_file.read_text().strip()
            except OSError as e:
                raise sc.SlurmError(f"cannot read the SLURM JWT file {self.jwt_file} "
                                    f"({e.strerror or e}): write the token there "
                                    "(scontrol token username=root lifespan=SECONDS)",
                                    unreachable=True) from None
            token = token.removeprefix("SLURM_JWT=")  # (scontrol token's own line)
            if not token:  # (not a quiet fallback to slurmrestd's own user)
                raise sc.SlurmError(f"the SLURM JWT file {self.jwt_file} is empty: write the "
                                    "token there (scontrol token username=root "
                                    "lifespan=SECONDS)", unreachable=True)
        if not token:
            return None
        expiry = claims_of(token).get("exp")
        if isinstance(expiry, int | float) and expiry < time.time():
            where = self.jwt_file or "MGPU_SLURM_JWT"
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expiry))
            raise sc.SlurmError(f"the SLURM JWT ({where}) expired at {when}: give the bridge "
                                "a new one (scontrol token username=root lifespan=SECONDS)",
                                unreachable=True)
        return token

    def _own_user(self, token: str) -> str:
        """Whom a request acts as when no job's owner is named: the token's user."""
        claims = claims_of(token)
        user = claims.get("sun") or claims.get("username")
        if user:
            return str(user)
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # (a uid without a name: SLURM knows it by number)
            return str(os.geteuid())

    def _session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.socket, limit=CONNECTIONS) if self.socket
            else aiohttp.TCPConnector(limit=CONNECTIONS))
        return aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def _jobs(self, ids: list[int], token: str | None) -> list[dict[str, Any]]:
        """The jobs of ``GET job/{id}`` for each id, at once (an unknown id: none)."""
        async with self._session() as session:
            answers = _all(await asyncio.gather(*(
                self._request(session, "GET", f"/job/{i}", token, missing_ok=True)
                for i in ids), return_exceptions=True))
        return [rec for a in answers if a for rec in a.get("jobs") or []]

    async def _each(self, method: str, paths: list[str],
                    body: dict[str, Any] | None = None) -> None:
        """The same request of each path, at once; the first failure is raised."""
        if not paths:
            return
        token = self._token()
        async with self._session() as session:
            _all(await asyncio.gather(*(
                self._request(session, method, path, token, body=body) for path in paths),
                return_exceptions=True))

    async def _one(self, method: str, path: str, token: str | None, user: str | None = None,
                   body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self._session() as session:
            answer = await self._request(session, method, path, token, user, body)
        assert answer is not None  # (missing_ok is not set)
        return answer

    async def _request(self, session: aiohttp.ClientSession, method: str, path: str,
                       token: str | None, user: str | None = None,
                       body: dict[str, Any] | None = None, missing_ok: bool = False
                       ) -> dict[str, Any] | None:
        """One request; its JSON answer (None: the job is unknown, with ``missing_ok``)."""
        headers = {}
        if token is not None:
            headers = {"X-SLURM-USER-TOKEN": token,
                       "X-SLURM-USER-NAME": user or self._own_user(token)}
        what = f"slurmrestd ({self.url}) {method} {API}{path.partition('?')[0]}"
        try:
            async with session.request(method, self.base + API + path, json=body,
                                       headers=headers) as reply:
                status, text = reply.status, await reply.text(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise sc.SlurmError(f"{what}: no answer ({type(e).__name__}: {e}): is slurmrestd "
                                "running and listening there (--slurm-rest)?",
                                unreachable=True) from None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)
                  and not _array_done(e)]
        if status == 200 and (not errors or _taken(answer)):
            return answer
        codes = [_code(e) for e in errors]
        if missing_ok and NO_SUCH_JOB in codes:
            return None
        if status in (401, 403):
            raise sc.SlurmError(
                f"{what}: refused the bridge's credentials ({status} {text.strip()[:200]}): "
                + ("check the JWT (--slurm-jwt-file, MGPU_SLURM_JWT) and that slurmrestd "
                   "runs with -a rest_auth/jwt" if token is not None else
                   "without a JWT, slurmrestd (rest_auth/local) takes only a unix socket's "
                   "callers of its own uid or root: run the bridge as that user, or give "
                   "it a JWT"), unreachable=True)
        words = "; ".join(_words(e) for e in errors) or f"HTTP {status}: {text.strip()[:300]}"
        raise sc.SlurmError(f"{what}: {words}", unreachable=status in (502, 503, 504) or any(
            _unreachable(c) for c in codes if c is not None) or any(
            w in words for w in sc.UNREACHABLE))


def _taken(answer: Mapping[str, Any]) -> bool:
    """Whether a submission's answer has a job id: SLURM took the job, whatever its errors
    say (as ``sbatch``, which prints the id and the error, e.g. "Required node not
    available" while slurmd has not registered with a restarted slurmctld: it waits)."""
    job_id = answer.get("job_id")
    return isinstance(job_id, int) and job_id > 0


def _array_done(error: Mapping[str, Any]) -> bool:
    """Whether an "error" is v0.0.38's report of an array's update that went through: it
    reports one, with no number, for each array it updates (a hold, a release of an
    array's task); an update that failed has SLURM's number (e.g. 2084, "Job has already
    finished")."""
    return _code(error) in (None, 0) and str(error.get("description") or "").startswith(
        "job array update")


def _all(results: list[dict[str, Any] | BaseException | None]
         ) -> list[dict[str, Any] | None]:
    """The answers of requests made together, once all are done (so that none is left
    running when their session closes); the first failure is raised."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


def _code(error: Mapping[str, Any]) -> int | None:
    """An error's number (v0.0.38 names it error_number, error_code or errno)."""
    for key in ("error_number", "error_code", "errno"):
        if isinstance(error.get(key), int):
            return int(error[key])
    return None


def _words(error: Mapping[str, Any]) -> str:
    """An error's words: SLURM's, then slurmrestd's description when it says more."""
    said, detail = str(error.get("error") or ""), str(error.get("description") or "")
    words = f"{said} ({detail})" if said and detail and detail != said else said or detail
    code = _code(error)
    return f"{words} [{code}]" if code is not None else words


def transport_of(cfg: NodeConfig, env: Mapping[str, str]) -> SlurmTransport:
    """The bridge's way to SLURM: slurmrestd when ``cfg.slurm_rest`` names one, else SLURM's
    commands (with the environment ``env``: ``SLURM_CONF``, ``PATH``)."""
    if cfg.slurm_rest:
        return SlurmRest(cfg.slurm_rest, cfg.slurm_jwt, cfg.slurm_jwt_file)
    return SlurmCommands(env)
