"""Configuration: precedence flag > env > file > default, and where each value came from.

Tier 1: ``load()`` takes the environment and the file's content as arguments, so no test
here reads the real environment or a real config file (except ``read_file`` itself).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mgpu.core.config import (
    DEFAULT_NODE_PORT,
    DEFAULT_PORT,
    SECTIONS,
    ClientConfig,
    LogConfig,
    MasterConfig,
    NodeConfig,
    describe,
    parse_hostport,
)
from mgpu.core.config_sources import CLIENT_DEFAULTS, CLIENT_FIELDS
from mgpu.core.errors import ConfigError
from mgpu.utils.config_file import client_settings
from mgpu.utils.settings import config_file, load, read_file

FILE = Path("/etc/mgpu/test.toml")


def load_master(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    file: dict[str, Any] | None = None,
) -> tuple[MasterConfig, dict[str, str]]:
    return load(MasterConfig, flags, file_data=file or {}, file_path=FILE, environ=env or {})


def load_client(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    file: dict[str, Any] | None = None,
) -> tuple[ClientConfig, dict[str, str]]:
    return load(ClientConfig, flags, file_data=file or {}, file_path=FILE, environ=env or {})


# ---------------------------------------------------------------- precedence


def test_defaults() -> None:
    cfg, sources = load_master()
    assert (cfg.host, cfg.port) == ("127.0.0.1", DEFAULT_PORT)
    assert set(sources.values()) == {"default"}
    assert set(sources) == {f.name for f in dataclasses.fields(MasterConfig)}
    node, _ = load(NodeConfig, file_data={}, environ={})
    assert node.port == DEFAULT_NODE_PORT
    assert node.fake_gpus is None
    assert node.effective_data_dir.name == f"node-{node.node_id}"


@pytest.mark.parametrize(
    ("flags", "env", "file", "want", "source"),
    [
        ({}, {}, {}, DEFAULT_PORT, "default"),
        ({}, {}, {"port": 7000}, 7000, f"file {FILE}"),
        ({}, {"MGPU_PORT": "7100"}, {"port": 7000}, 7100, "env MGPU_PORT"),
        ({"port": 7200}, {"MGPU_PORT": "7100"}, {"port": 7000}, 7200, "flag"),
        ({"port": None}, {"MGPU_PORT": "7100"}, {}, 7100, "env MGPU_PORT"),  # None: not given
        ({}, {"MGPU_PORT": ""}, {"port": 7000}, 7000, f"file {FILE}"),  # empty: not set
    ],
)
def test_precedence_flag_env_file_default(
    flags: dict[str, Any], env: dict[str, str], file: dict[str, Any], want: int, source: str
) -> None:
    cfg, sources = load_master(flags, env, {"master": file})
    assert cfg.port == want
    assert sources["port"] == source


def test_precedence_is_per_field_and_types_are_coerced() -> None:
    cfg, sources = load_master(
        flags={"host": "0.0.0.0"},
        env={"MGPU_NODE_TIMEOUT": "2.5", "MGPU_DATA_DIR": "~/mgpu-data"},
        file={"master": {"heartbeat_interval": 1, "host": "10.0.0.1"}},
    )
    assert cfg.host == "0.0.0.0"
    assert cfg.node_timeout == 2.5
    assert cfg.heartbeat_interval == 1.0
    assert isinstance(cfg.heartbeat_interval, float)
    assert cfg.data_dir == Path.home() / "mgpu-data"
    named = {
        "host": "flag",
        "data_dir": "env MGPU_DATA_DIR",
        "node_timeout": "env MGPU_NODE_TIMEOUT",
        "heartbeat_interval": f"file {FILE}",
    }
    assert {k: v for k, v in sources.items() if k in named} == named
    assert set(sources) == {f.name for f in dataclasses.fields(MasterConfig)}
    assert {v for k, v in sources.items() if k not in named} == {"default"}


def test_each_config_reads_its_own_table() -> None:
    file = {"master": {"port": 1111}, "node": {"port": 2222, "fake_gpus": 4}, "log": {}}
    master, _ = load_master(file=file)
    node, _ = load(NodeConfig, file_data=file, file_path=FILE, environ={})
    assert master.port == 1111
    assert (node.port, node.fake_gpus) == (2222, 4)
    assert set(SECTIONS.values()) == {"master", "node", "client", "log", "backend"}


def test_node_env_variables() -> None:
    env = {
        "MGPU_NODE_ID": "gpu07",
        "MGPU_MASTER_HOST": "head",
        "MGPU_MASTER_PORT": "9000",
        "MGPU_GPUS": "0,2",
        "MGPU_FAKE_GPUS": "3",
        "MGPU_NODE_DATA_DIR": "/var/lib/mgpu",
        "MGPU_KILL_GRACE": "5",
    }
    node, sources = load(NodeConfig, file_data={}, environ=env)
    assert (node.node_id, node.master_host, node.master_port) == ("gpu07", "head", 9000)
    assert (node.gpus, node.fake_gpus, node.kill_grace) == ("0,2", 3, 5.0)
    assert node.effective_data_dir == Path("/var/lib/mgpu")
    assert sources["fake_gpus"] == "env MGPU_FAKE_GPUS"


def test_log_config() -> None:
    env = {"MGPU_LOG_LEVEL": "debug", "MGPU_LOG_FORMAT": "json", "MGPU_LOG_FILE": "/tmp/m.log"}
    log, _ = load(LogConfig, file_data={}, environ=env)
    assert log == LogConfig(level="debug", file=Path("/tmp/m.log"), format="json")


@pytest.mark.parametrize(
    ("flags", "env", "file", "needle"),
    [
        ({}, {"MGPU_PORT": "eighty"}, {}, "MGPU_PORT: 'eighty' is not a valid int"),
        ({"port": "x"}, {}, {}, "--port: 'x' is not a valid int"),
        ({"node_timeout": "soon"}, {}, {}, "--node-timeout: 'soon' is not a valid float"),
        ({}, {}, {"master": {"port": "abc"}}, f"{FILE} [master]: 'abc' is not a valid int"),
        ({}, {}, {"master": 3}, "[master] must be a table"),
    ],
)
def test_bad_values_name_their_source(
    flags: dict[str, Any], env: dict[str, str], file: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_master(flags, env, file)
    assert needle in info.value.message
    assert info.value.exit_code == 2


# ---------------------------------------------------------------- MGPU_MASTER


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("gpu-master:9000", "gpu-master", 9000),
        ("gpu-master", "gpu-master", DEFAULT_PORT),
        ("http://10.1.2.3:8081/", "10.1.2.3", 8081),
        ("https://head", "head", DEFAULT_PORT),
        (" head:1 ", "head", 1),
        (":9000", "localhost", 9000),
        ("[::1]:9000", "::1", 9000),
        ("[fe80::1]", "fe80::1", DEFAULT_PORT),
    ],
)
def test_mgpu_master(value: str, host: str, port: int) -> None:
    cfg, sources = load_client(env={"MGPU_MASTER": value})
    assert (cfg.master_host, cfg.master_port) == (host, port)
    assert sources["master_host"] == "env MGPU_MASTER"
    assert sources["master_port"] == ("env MGPU_MASTER" if port != DEFAULT_PORT else "default")


@pytest.mark.parametrize("value", ["head:", "head:http", "head:0", "head:65536", "head:-1"])
def test_mgpu_master_bad_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"MGPU_MASTER: .* is not HOST:PORT"):
        load_client(env={"MGPU_MASTER": value})


def test_mgpu_master_beats_the_founding_pair_and_the_file() -> None:
    env = {"MGPU_MASTER": "new:2000", "MGPU_MASTER_HOST": "old", "MGPU_MASTER_PORT": "1000"}
    cfg, _ = load_client(env=env, file={"client": {"master_host": "file", "master_port": 3}})
    assert (cfg.master_host, cfg.master_port) == ("new", 2000)


def test_founding_pair_still_works() -> None:
    cfg, sources = load_client(env={"MGPU_MASTER_HOST": "old", "MGPU_MASTER_PORT": "1000"})
    assert (cfg.master_host, cfg.master_port) == ("old", 1000)
    assert sources["master_port"] == "env MGPU_MASTER_PORT"


def test_flags_beat_mgpu_master() -> None:
    env = {"MGPU_MASTER": "env-host:2000"}
    cfg, sources = load_client({"master_host": "flag-host", "master_port": 3000}, env)
    assert (cfg.master_host, cfg.master_port) == ("flag-host", 3000)
    assert sources["master_host"] == sources["master_port"] == "flag"


def test_a_port_flag_alone_beats_the_port_of_mgpu_master() -> None:
    cfg, sources = load_client({"master_port": 3000}, {"MGPU_MASTER": "env-host:2000"})
    assert (cfg.master_host, cfg.master_port) == ("env-host", 3000)
    assert (sources["master_host"], sources["master_port"]) == ("env MGPU_MASTER", "flag")


def test_flags_not_given_leave_mgpu_master_in_force() -> None:
    """A CLI passes every flag, with None for those the user did not give."""
    flags = {"master_host": None, "master_port": None, "timeout": None}
    cfg, _ = load_client(flags, {"MGPU_MASTER": "env-host:2000"})
    assert (cfg.master_host, cfg.master_port) == ("env-host", 2000)


def test_parse_hostport_names_where_the_value_came_from() -> None:
    assert parse_hostport("h:1", "--master") == ("h", 1)
    with pytest.raises(ConfigError, match=r"^--master: 'h:x' is not HOST:PORT"):
        parse_hostport("h:x", "--master")


# ---------------------------------------------------------------- the file


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[master]\nport = 9999\n[log]\nlevel = "debug"\n')
    data, where = read_file(path)
    assert where == path
    cfg, sources = load(MasterConfig, file_data=data, file_path=where, environ={})
    assert cfg.port == 9999
    assert sources["port"] == f"file {path}"


def test_read_file_missing_is_fine_unless_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MGPU_CONFIG", raising=False)
    assert read_file(tmp_path / "nope.toml") == ({}, None)
    monkeypatch.setenv("MGPU_CONFIG", str(tmp_path / "nope.toml"))
    assert config_file() == tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"MGPU_CONFIG names .*nope\.toml, which does not exist"):
        read_file()


def test_read_file_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[master\nport = 1\n")
    with pytest.raises(ConfigError, match=r"cannot read config file .*config.toml"):
        read_file(path)


def test_a_misspelled_table_or_setting_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[mastr]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[mastr\]: the tables are "
                                          r"\[master\], \[node\], \[client\], \[log\]"):
        read_file(path)
    path.write_text("[master]\nprot = 1\n")
    data, found = read_file(path)
    with pytest.raises(ConfigError, match=r"\[master\] has no setting 'prot': its settings "
                                          r"are host, port, "):
        load(MasterConfig, file_data=data, file_path=found, environ={})
    path.write_text("[client]\nmaster = 'h:1'\n")  # the light client path says the same
    data, found = read_file(path)
    with pytest.raises(ConfigError, match=r"\[client\] has no setting 'master'"):
        client_settings(file_data=data, file_path=found, environ={})


def test_config_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MGPU_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_file() == tmp_path / "mgpu" / "config.toml"


def test_load_reads_the_file_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[client]\ntimeout = 3\n")
    monkeypatch.setenv("MGPU_CONFIG", str(path))
    cfg, sources = load(ClientConfig, environ={})
    assert cfg.timeout == 3.0
    assert sources["timeout"] == f"file {path}"


def test_describe_rows() -> None:
    cfg, sources = load_master({"port": 1234})
    rows = describe(cfg, sources)
    assert ("port", "1234", "flag") in rows
    assert ("host", "127.0.0.1", "default") in rows
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(MasterConfig)]


# ---------------------------------------------------------------- the client's light path


def test_client_fields_are_client_configs() -> None:
    """``config_sources`` repeats ClientConfig's fields so that a client command need not
    import dataclasses; they must not drift apart."""
    fields = dataclasses.fields(ClientConfig)
    assert tuple((f.name, f.type, f.metadata["env"]) for f in fields) == CLIENT_FIELDS
    assert {f.name: f.default for f in fields} == CLIENT_DEFAULTS


CLIENT_CASES: list[tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = [
    ({}, {}, {}),
    ({}, {"MGPU_MASTER": "head:9000"}, {}),
    ({}, {"MGPU_MASTER": "head"}, {"client": {"master_port": 7}}),
    ({}, {"MGPU_MASTER_HOST": "old", "MGPU_MASTER_PORT": "1000"}, {}),
    ({}, {"MGPU_MASTER": "new:2000", "MGPU_MASTER_HOST": "old"}, {"client": {"master_host": "f"}}),
    ({"master_host": "flag", "master_port": 3000}, {"MGPU_MASTER": "env:2000"}, {}),
    ({"master_port": 3000}, {"MGPU_MASTER": "env:2000"}, {}),
    ({"master_host": None, "master_port": None}, {"MGPU_MASTER": "env:2000"}, {}),
    ({}, {"MGPU_TIMEOUT": "2.5"}, {"client": {"timeout": 9}}),
    ({}, {"MGPU_TIMEOUT": ""}, {"client": {"timeout": 9, "master_host": "file"}}),
    ({}, {}, {"client": {"master_port": "8081"}, "master": {"port": 1}}),
    ({"ca": "/etc/ca.pem"}, {"MGPU_CA": "/other.pem", "MGPU_TLS": "1"}, {}),
    ({}, {"MGPU_TLS": "yes"}, {"client": {"ca": "~/ca.pem"}}),
    # errors, worded alike
    ({}, {"MGPU_MASTER_PORT": "eighty"}, {}),
    ({}, {"MGPU_TIMEOUT": "soon"}, {}),
    ({}, {}, {"client": {"master_port": "abc"}}),
    ({}, {}, {"client": 3}),
    ({}, {"MGPU_MASTER": "head:http"}, {}),
    ({"master_port": "x"}, {}, {}),
]


@pytest.mark.parametrize(("flags", "env", "file"), CLIENT_CASES)
def test_client_settings_is_load_client_config(
    flags: dict[str, Any], env: dict[str, str], file: dict[str, Any]
) -> None:
    try:
        cfg, _ = load_client(flags, env, file)
        want: object = (cfg.master_host, cfg.master_port, cfg.timeout, cfg.ca, cfg.tls)
    except ConfigError as e:
        want = ("error", e.message)
    try:
        got: object = client_settings(flags, file_data=file, file_path=FILE, environ=env)
    except ConfigError as e:
        got = ("error", e.message)
    assert got == want


def test_client_settings_reads_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[client]\nmaster_host = "from-file"\ntimeout = 4\n')
    monkeypatch.setenv("MGPU_CONFIG", str(path))
    for name in ("MGPU_MASTER", "MGPU_MASTER_HOST", "MGPU_MASTER_PORT", "MGPU_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    cfg, _ = load(ClientConfig)
    assert client_settings() == (cfg.master_host, cfg.master_port, cfg.timeout, cfg.ca, cfg.tls)
    assert client_settings() == ("from-file", DEFAULT_PORT, 4.0, None, False)
    path.write_text("[client\n")
    with pytest.raises(ConfigError) as light:
        client_settings()
    with pytest.raises(ConfigError) as full:
        load(ClientConfig)
    assert light.value.message == full.value.message
    monkeypatch.setenv("MGPU_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"MGPU_CONFIG names .*nope\.toml, which does not exist"):
        client_settings()
