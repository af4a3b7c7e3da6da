"""The ``mgpu.cli`` package's own wiring (tier 1): every subcommand reaches a handler, and a
job command loads no more of the package than it needs (start-up time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgpu.cli import admin_commands, commands, grammar

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.mark.parametrize("name", sorted(grammar.COMMANDS))
def test_every_subcommand_has_a_handler(name: str) -> None:
    handler = grammar.COMMANDS[name][0]
    cmd = f"cmd_{name}"
    # The job commands are the functions themselves (in commands.py, or a command's own
    # module such as cli/usage.py); the others are found when run.
    direct = getattr(commands, cmd, None)
    own = getattr(sys.modules[handler.__module__], cmd, None)
    assert handler in (direct, own) or callable(getattr(admin_commands, handler.__name__))
    assert handler.__name__ == cmd


def test_a_job_command_does_not_load_the_admin_commands() -> None:
    code = (
        "import sys\n"
        "from mgpu.cli import main\n"
        "main(['submit', '--help'])\n"  # argparse, the grammar, no master needed
        "sys.stderr.write(repr(sorted(m for m in sys.modules if m.startswith('mgpu.cli'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    loaded = done.stderr.strip().splitlines()[-1]
    assert "mgpu.cli.commands" in loaded and "mgpu.cli.admin_commands" not in loaded, loaded
