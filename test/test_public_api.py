"""The published surface of ``mgpu`` and what importing it costs (tier 1: no master).

The names of ``mgpu.__all__`` are a promise to users (DESIGN.md). ``import mgpu`` and the
client commands must not load the master's or the agent's dependencies: a client command
runs in a fresh interpreter, and its start-up time is part of the interface.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import mgpu

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

PUBLIC = {
    "SimpleMaster": "mgpu.server.master",
    "SimpleNode": "mgpu.node.agent",
    "NodeManager": "mgpu.node.agent",
    "SimpleClient": "mgpu.client.client",
    "SimpleJob": "mgpu.core.models",
    "JobProcess": "mgpu.core.models",
    "NodeInfo": "mgpu.core.models",
    "JobState": "mgpu.core.models",
    "MessageType": "mgpu.core.messages",
}
SERVER_ONLY = ("aiohttp", "asyncio", "psutil", "sqlite3", "pynvml", "http.client")


def test_all_lists_exactly_the_published_names() -> None:
    assert sorted(mgpu.__all__) == sorted([*PUBLIC, "__version__"])


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_name_is_its_home_modules_object(name: str) -> None:
    home = sys.modules.get(PUBLIC[name]) or __import__(PUBLIC[name], fromlist=[name])
    assert getattr(mgpu, name) is getattr(home, name)
    assert name in dir(mgpu)


def test_version_matches_the_package_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert mgpu.__version__ == project["version"] == "0.1.0"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = mgpu.Nope


def test_founding_calls_keep_their_signatures() -> None:
    from mgpu import SimpleClient, SimpleMaster, SimpleNode

    client = inspect.signature(SimpleClient)
    assert list(client.parameters)[:3] == ["host", "port", "timeout"]
    assert client.parameters["host"].default == "localhost"
    assert client.parameters["port"].default == 8080
    submit = inspect.signature(SimpleClient.submit_job)
    assert {"gpus", "cmd", "name", "cwd", "env"} <= set(submit.parameters)
    assert submit.parameters["gpus"].default == 1
    assert list(inspect.signature(SimpleMaster).parameters)[:2] == ["host", "port"]
    assert hasattr(SimpleMaster, "start_server")
    assert list(inspect.signature(SimpleNode).parameters)[:4] == [
        "node_id",
        "master_host",
        "master_port",
        "node_port",
    ]
    assert hasattr(SimpleNode, "start_agent")


def test_the_cli_entry_points_exist() -> None:
    from mgpu import cli

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mgpu"] == "mgpu.cli:main"
    for name in ("main", "server_main", "node_main", "client_main", "queue_main", "cancel_main"):
        assert callable(getattr(cli, name))


# ------------------------------------------------------------------ what imports cost


@pytest.fixture
def dead_address() -> Iterator[str]:
    """``127.0.0.1:PORT`` where nothing listens (a bound, non-listening socket keeps the
    port from being reused while the test runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; its exit status and the modules it loaded."""
    script = (
        "import json, sys\n"
        "status = 0\n"
        f"{code}\n"
        "print(json.dumps({'status': status, 'modules': sorted(sys.modules)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_import_mgpu_loads_nothing_heavy() -> None:
    loaded = _modules_after("import mgpu")["modules"]
    assert isinstance(loaded, list)
    for name in (*SERVER_ONLY, "msgspec", "mgpu.core.models", "mgpu.client.client"):
        assert name not in loaded, f"`import mgpu` imported {name}"


@pytest.mark.parametrize(
    ("argv", "also_absent"),
    [
        (["queue"], ()),
        (["submit", "-G", "2", "python train.py"], ("msgspec",)),  # submit needs no msgspec
        (["nodes", "--json"], ()),
    ],
)
def test_client_commands_do_not_import_the_server_side(
    dead_address: str, argv: list[str], also_absent: tuple[str, ...]
) -> None:
    code = (
        "from mgpu.cli import main\n"
        f"status = main(['--master', {dead_address!r}, *{argv!r}])\n"
        "sys.stderr.write(str(status))"
    )
    result = _modules_after(code)
    assert result["status"] == 3  # the master is not running: ConnectionFailed
    loaded = result["modules"]
    assert isinstance(loaded, list)
    for name in (*SERVER_ONLY, *also_absent):
        assert name not in loaded, f"`mgpu {' '.join(argv)}` imported {name}"


def test_submit_imports_only_what_its_start_up_budget_allows(
    dead_address: str, tmp_path: Path
) -> None:
    """`mgpu submit` has 2.5 x `python -c pass` (bench/cli.py), and argparse or json alone
    (through the re and enum they import) would spend most of it: a plain submit line is
    read by mgpu.cli.plainargs, its JSON written by mgpu.utils.plainjson, its master found by
    mgpu.core.config_sources."""
    code = (
        "import sys\n"
        "from mgpu.cli import main\n"
        f"status = main(['--master', {dead_address!r}, 'submit', '-G', '2', '-J', 'x',\n"
        "               '--export=ALL,A=1', 'python', 't.py', '--lr', '3e-4'])\n"
        "sys.stdout.write(' '.join([str(status), *sorted(sys.modules)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["PYTHONPATH"] = str(SRC)
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no config file
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    status, *loaded = done.stdout.split()
    assert status == "3", done.stderr  # the master is not running: ConnectionFailed
    heavy = ("argparse", "re", "json", "enum", "typing", "dataclasses", "pathlib", "socket")
    for name in (*heavy, "shlex", "getpass", "urllib", "datetime", "msgspec", "tomllib"):
        assert name not in loaded, f"`mgpu submit` imported {name}"
