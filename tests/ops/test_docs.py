"""The docs never rot: their examples run, and the CLI reference is current.

Fenced blocks in ``docs/*.md`` are executed when their info string says so:

- ````` ```python file=NAME ````` is written to ``NAME`` in the page's working directory;
- ````` ```sh background ````` lines are long-running commands (``mawex master``,
  ``mawex worker``) started in order; the runner waits for each master to answer,
  for a leader, and for every worker to check in;
- ````` ```sh run ````` and ````` ```python run ````` blocks run in order and must succeed
  (Python blocks assert what they show).

Each page runs in a fresh directory. Loopback URLs ``127.0.0.1:70xx`` in runnable
blocks are replaced by free ports, so the docs can show the usual 7070. Every
process is stopped by PID at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mawex.cluster import free_port
from tests.ops.conftest import REPO
from tests.polling import wait_until

DOCS = REPO / "docs"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
RUNNABLE = ("run", "background")
TIMEOUT = 120


@dataclass
class Block:
    lang: str
    mode: str  # run, background, file, or "" (not executed)
    arg: str
    text: str
    line: int


def blocks(path: Path) -> list[Block]:
    found = []
    source = path.read_text()
    for match in FENCE.finditer(source):
        words = match.group(1).split()
        lang = words[0] if words else ""
        mode, arg = "", ""
        for word in words[1:]:
            if word in RUNNABLE:
                mode = word
            elif word.startswith("file="):
                mode, arg = "file", word.removeprefix("file=")
        line = source.count("\n", 0, match.start()) + 1
        found.append(Block(lang, mode, arg, match.group(2), line))
    return found


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if any(b.mode for b in blocks(p)))


def _commands(text: str) -> list[str]:
    """Logical shell lines: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


@dataclass
class Page:
    path: Path
    workdir: Path
    env: dict[str, str]
    procs: list[tuple[str, subprocess.Popen[bytes], Path]]

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"background-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec env {command}"],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append((command, proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {command} (pid {proc.pid}, exit {proc.poll()})\n{log.read_text()[-3000:]}"
            for command, proc, log in self.procs
        )

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def page_env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    env = {k: v for k, v in env.items() if not k.startswith("MAWEX_")}
    page = Page(request.param if hasattr(request, "param") else REPO, tmp_path, env, [])
    try:
        yield page
    finally:
        page.stop()


def _localize(path: Path) -> dict[str, str]:
    """Each loopback port the page's runnable blocks use → a free port."""
    ports: dict[str, str] = {}
    for block in blocks(path):
        if block.mode:
            for port in re.findall(r"127\.0\.0\.1:(70\d\d)", block.text):
                ports.setdefault(port, str(free_port()))
    return ports


def _start_background(page: Page, block: Block) -> None:
    masters: list[str] = []
    workers = 0
    for command in _commands(block.text):
        argv = shlex.split(command)
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            argv.pop(0)  # VAR=value prefixes
        assert argv[0] == "mawex", f"background commands are mawex commands: {command}"
        proc = page.spawn(command)
        if argv[1] == "master":
            listen = argv[argv.index("--listen") + 1]
            url = f"http://{listen}"
            masters.append(url)

            def healthy(
                url: str = url, proc: subprocess.Popen[bytes] = proc, command: str = command
            ) -> bool:
                assert proc.poll() is None, f"{command} exited\n{page.logs()}"
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, 60, f"{url} to answer", describe=page.logs)
        elif argv[1] == "worker":
            workers += len(argv[argv.index("--group") + 1].split(","))

    def leader_with_workers() -> bool:
        for command, proc, _ in page.procs:
            assert proc.poll() is None, f"{command} exited\n{page.logs()}"
        for url in masters:
            try:
                state = httpx.get(f"{url}/v1/state", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                continue
            connected = [w for w in state.get("workers", []) if w["status"] != "disconnected"]
            if state.get("leader") and len(connected) >= workers:
                return True
        return False

    wait_until(leader_with_workers, 60, "a leader and every worker", describe=page.logs)


def _run(page: Page, block: Block, index: int) -> None:
    where = f"{page.path.relative_to(REPO)}:{block.line}"
    if block.lang == "python":
        script = page.workdir / f"_block_{index}.py"
        script.write_text(block.text)
        argv = [sys.executable, str(script)]
    elif block.lang in ("sh", "bash", "console"):
        argv = ["bash", "-euo", "pipefail", "-c", block.text]
    else:
        raise AssertionError(f"{where}: cannot run a {block.lang!r} block")
    done = subprocess.run(
        argv, cwd=page.workdir, env=page.env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, (
        f"{where}: exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        f"\n{page.logs()}"
    )


@pytest.mark.parametrize("path", _pages(), ids=lambda p: p.name)
def test_doc_examples_run(path: Path, page_env: Page) -> None:
    page_env.path = path
    ports = _localize(path)
    for index, block in enumerate(blocks(path)):
        if not block.mode:
            continue
        text = block.text
        for port, free in ports.items():
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
        block = Block(block.lang, block.mode, block.arg, text, block.line)
        if block.mode == "file":
            (page_env.workdir / block.arg).write_text(block.text)
        elif block.mode == "background":
            _start_background(page_env, block)
        else:
            _run(page_env, block, index)


def test_the_tutorial_has_runnable_examples() -> None:
    modes = [b.mode for b in blocks(DOCS / "tutorial.md")]
    assert modes.count("run") >= 5 and "background" in modes and "file" in modes


def test_cli_reference_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "gen_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr


def test_docs_link_to_pages_that_exist() -> None:
    for path in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
