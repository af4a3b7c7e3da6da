"""mgpu.utils.logging and mgpu.utils.network (tier 1; files only under tmp_path)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mgpu.core.config import LogConfig
from mgpu.core.errors import ConfigError, MgpuError
from mgpu.utils.logging import format_time, get_logger, setup_logging
from mgpu.utils.network import (
    http_url,
    port_in_use_message,
    read_json,
    write_json_atomic,
)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+) ([\w.]+): (.*)$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger back as pytest had it, closing what setup_logging added."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in ("mgpu", "aiohttp.access")}
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def test_get_logger() -> None:
    assert get_logger("master").name == "mgpu.master"
    assert get_logger("mgpu.server.master").name == "mgpu.server.master"
    assert get_logger("mgpu").name == "mgpu"


def test_format_time() -> None:
    assert format_time(1_800_000_000.1234) == "2027-01-15T08:00:00.123Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"


def test_text_format_to_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "master.log"  # the directory is created
    setup_logging(LogConfig(level="info", file=path), "master")
    log = get_logger("master")
    log.debug("hidden")
    log.info("listening on %s:%d", "127.0.0.1", 8080)
    logging.getLogger("aiohttp.access").info("GET / 200")  # quiet unless debug
    logging.getLogger("aiohttp.server").error("handler failed")
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert parsed[0] and parsed[0].groups() == (
        "INFO",
        "mgpu.master",
        "listening on 127.0.0.1:8080",
    )
    assert parsed[1] and parsed[1].groups() == ("ERROR", "aiohttp.server", "handler failed")


def test_debug_level_shows_everything(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    setup_logging(LogConfig(level="DEBUG", file=path), "node")
    get_logger("node").debug("detail")
    logging.getLogger("aiohttp.access").info("GET / 200")
    assert len(path.read_text().splitlines()) == 2


def test_exception_is_logged_with_traceback(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    setup_logging(LogConfig(level="info", file=path), "master")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("master").exception("handler crashed")
    text = path.read_text()
    assert text.splitlines()[0].endswith("ERROR mgpu.master: handler crashed")
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: boom" in text


def test_json_format(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    setup_logging(LogConfig(level="warning", file=path, format="json"), "node")
    log = get_logger("node.supervisor")
    log.info("hidden")
    log.warning("job %d killed", 7, extra={"job_id": 7, "pids": {3, 4}})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.error("oops", exc_info=True)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["ts"].endswith("Z")
    assert {k: first[k] for k in ("level", "component", "logger", "msg", "job_id")} == {
        "level": "warning",
        "component": "node",
        "logger": "mgpu.node.supervisor",
        "msg": "job 7 killed",
        "job_id": 7,
    }
    assert "exc" not in first
    assert isinstance(first["pids"], str)  # not JSON: written as its str()
    assert second["msg"] == "oops"
    assert "ZeroDivisionError" in second["exc"]


def test_idempotent_and_reconfigurable(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    setup_logging(LogConfig(file=first), "master")
    setup_logging(LogConfig(file=first), "master")
    get_logger("x").info("once")
    assert first.read_text().count("once") == 1
    setup_logging(LogConfig(file=second), "master")
    get_logger("x").info("moved")
    assert "moved" not in first.read_text()
    assert second.read_text().count("moved") == 1
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_mgpu_handler", False)]
    assert len(ours) == 1


def test_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LogConfig(), "client")
    get_logger("client").warning("to stderr")
    err = capsys.readouterr().err
    assert TEXT_LINE.match(err.strip().splitlines()[-1])
    assert err.strip().endswith("WARNING mgpu.client: to stderr")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (LogConfig(level="verbose"), "unknown log level 'verbose': use one of debug, info"),
        (LogConfig(format="xml"), "unknown log format 'xml': use 'text' or 'json'"),
    ],
)
def test_bad_settings(cfg: LogConfig, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        setup_logging(cfg, "master")
    assert message in info.value.message


def test_unwritable_log_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot open log file .*file/m.log for writing"):
        setup_logging(LogConfig(file=blocker / "m.log"), "master")
    with pytest.raises(ConfigError, match="cannot open log file"):
        setup_logging(LogConfig(file=tmp_path), "master")  # a directory


# ---------------------------------------------------------------- network


def test_port_in_use_message() -> None:
    assert port_in_use_message("127.0.0.1", 8080) == (
        "port 8080 on 127.0.0.1 is already in use: stop the other process or pass --port"
    )


def test_http_url() -> None:
    assert http_url("localhost", 8080) == "http://localhost:8080"
    assert http_url("::1", 80) == "http://[::1]:80"
    assert http_url("[::1]", 80) == "http://[::1]:80"


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "master.json"
    obj = {"host": "127.0.0.1", "port": 40001, "pid": os.getpid(), "version": "0.1.0"}
    write_json_atomic(path, obj)
    assert read_json(path) == obj
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_json_atomic(path, {"port": 2})
    assert read_json(path) == {"port": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.json"]  # no temp left


def test_write_json_atomic_failure_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["node.json"]


def test_read_json_missing_and_corrupt(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError):
        read_json(missing)
    assert read_json(missing, default=None) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{half")
    with pytest.raises(MgpuError, match=r"bad.json is not valid JSON"):
        read_json(bad, default=None)
