"""``mgpu top`` in a real terminal: tmux runs it against a real cluster, the tests read
the screen (``capture-pane``) and type (``send-keys``)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Cluster, wait_until
from mgpu.client.top_view import node_lines, screen

WIDTH, HEIGHT = 140, 30


class Tmux:
    """A tmux server of the test's own (its own socket), running one command."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.socket = tmp / "tmux.sock"
        self.done = tmp / "top.exit"
        self.env = env

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", str(self.socket), *args], env=self.env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, *mgpu: str, height: int = HEIGHT) -> None:
        command = shlex.join([sys.executable, "-m", "mgpu", *mgpu])
        self.run("new-session", "-d", "-s", "top", "-x", str(WIDTH), "-y", str(height),
                 f"{command}; echo $? > {shlex.quote(str(self.done))}")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_for(self, *texts: str, timeout: float = 20.0) -> str:
        seen = [""]

        def shown() -> bool:
            seen[0] = self.screen()
            return all(t in seen[0] for t in texts)

        wait_until(shown, timeout, message=lambda: f"{texts} on the screen:\n{seen[0]}")
        return seen[0]

    def exit_status(self) -> int:
        text = wait_until(lambda: self.done.exists() and self.done.read_text().strip(),
                          timeout=15, message="mgpu top to exit")
        return int(text)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], env=self.env,
                       capture_output=True, timeout=30)


MakeTmux = Callable[[dict[str, str]], Tmux]


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[MakeTmux]:
    """A factory: ``tmux(env)`` is a tmux server for this test, killed at its end."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run .ci/system-packages (it installs tmux)")
    made: list[Tmux] = []

    def make(env: dict[str, str]) -> Tmux:
        t = Tmux(tmp_path, {**env, "TERM": "xterm-256color"})
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def row_of(text: str, job_id: int) -> str:
    for line in text.splitlines():
        if line.split()[:1] == [str(job_id)]:
            return line
    return ""


def test_top_redraws_nodes_gpus_and_queue_in_place(cluster: Cluster, tmux: MakeTmux) -> None:
    first = cluster.submit("sleep 600", "-G", "2", "-J", "toprun", "-t", "30:00")
    cluster.wait_job(first, ("running",))
    waiting = cluster.submit("sleep 600", "-G", "3", "-J", "needs-three")
    t = tmux(cluster.env)
    t.start("top")
    text = t.wait_for("toprun", "needs-three", "node1")
    assert text.splitlines()[0].startswith("mgpu top")
    assert "running" in row_of(text, first) and "30:00" in row_of(text, first)
    assert "pending" in row_of(text, waiting)
    node = next(line for line in text.splitlines() if line.startswith("node1"))
    assert "2/4" in node and f"0:{first} 1:{first} 2:- 3:-" in node, node

    # Changes appear where they belong, without a new screen scrolled in.
    third = cluster.submit("sleep 600", "-J", "newcomer")
    t.wait_for("newcomer")
    # It backfills: the 3-GPU job's reservation leaves one of node1's GPUs spare.
    wait_until(lambda: "running" in row_of(t.screen(), third), 20)
    cluster.mgpu("cancel", str(first))
    text = t.wait_for("4/4")  # freed, and both waiting jobs placed
    assert "toprun" not in text and "running" in row_of(text, waiting)
    assert "running" in row_of(text, third)
    node = next(line for line in text.splitlines() if line.startswith("node1"))
    held = [cell.split(":")[1] for cell in node.split()[3:7]]
    assert sorted(held) == sorted([str(waiting)] * 3 + [str(third)]), node
    assert text.splitlines()[0].startswith("mgpu top") and len(text.splitlines()) <= HEIGHT
    assert t.run("display-message", "-p", "-t", "top", "#{history_size}").strip() == "0"

    t.run("send-keys", "-t", "top", "q")
    assert t.exit_status() == 0
    cluster.mgpu("cancel", str(waiting), str(third))


@pytest.mark.cluster(nodes=0)
def test_top_pages_through_a_long_queue(cluster: Cluster, tmux: MakeTmux) -> None:
    cluster.api("/api/v1/jobs", {"jobs": [{"command": "true", "name": f"job-{i}"}
                                          for i in range(500)]})
    t = tmux(cluster.env)
    t.start("top", height=20)
    text = t.wait_for("of 500")
    footer = text.splitlines()[-1]
    shown = int(footer.split()[1].split("-")[1])
    assert 5 <= shown < 20 and footer.startswith(f"jobs 1-{shown} of 500"), footer
    assert row_of(text, 1) and not row_of(text, shown + 1)
    t.run("send-keys", "-t", "top", "n")
    text = t.wait_for(f"jobs {shown + 1}-{2 * shown} of 500")
    assert row_of(text, shown + 1) and not row_of(text, 1)
    t.run("send-keys", "-t", "top", "p")
    t.wait_for(f"jobs 1-{shown} of 500")
    cluster.submit("true", "-J", "one-more")
    t.wait_for("of 501")  # the total follows the queue live
    t.run("send-keys", "-t", "top", "q")
    assert t.exit_status() == 0


@pytest.mark.cluster(nodes=0)
def test_top_with_a_refused_token_says_so(cluster: Cluster, tmux: MakeTmux) -> None:
    t = tmux({**cluster.env, "MGPU_TOKEN": "wrong"})
    t.start("top")
    assert t.exit_status() != 0
    not_a_terminal = cluster.mgpu("top", check=False)
    assert not_a_terminal.returncode == 2 and "needs a terminal" in not_a_terminal.stderr


def test_the_screen_fits_its_size() -> None:
    jobs = [{"id": i, "name": "x" * 200, "user": "u", "state": "pending", "gpus": 1,
             "node": None, "started_at": None, "time_limit": None, "reason": "waiting"}
            for i in range(1, 101)]
    data = {"cluster": {"user": "u", "admin": False, "jobs": {"pending": 100}, "gpus": 0,
                        "gpus_used": 0, "nodes": 0, "now": 0.0},
            "nodes": {"nodes": [], "holders": {}},
            "queue": {"total": 100, "offset": 0, "limit": 24, "jobs": jobs}}
    lines, shown = screen(data, 80, 24, 0.0, "m:1", "live")
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert lines[-1].startswith(f"jobs 1-{shown} of 100") and shown == 24 - 7


def test_the_nodes_show_what_a_node_reports() -> None:
    node = {"node_id": "gpu-box", "state": "up", "gpus": [
        {"index": 0, "job_id": 7, "utilization": 45},
        {"index": 1, "job_id": None, "utilization": 0, "busy_outside": True}]}
    lines = node_lines([node], 10)
    assert "1/2" in lines[1] and "0:7(45%) 1:-(0%)!" in lines[1], lines
