"""``mawex submit``, ``mawex status`` and ``mawex results``: the client side of the CLI.

Machine-readable output goes to stdout (JSON), everything for people (progress
bars, summaries) to stderr, so ``mawex submit --file big.jsonl | jq`` works and
still shows progress on the terminal. ``status`` and ``results`` print tables and
coloured lines on a terminal and JSON otherwise (``--json`` forces it).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from mawex.addresses import display_url
from mawex.cli.options import ca_option, masters_option, option, token_option
from mawex.errors import Rejected

F = TypeVar("F", bound=Callable[..., Any])

TASK_LINE_FIELDS = frozenset({"id", "group", "payload", "max_attempts", "timeout_s"})
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
EVENT_STYLES = {
    "scheduled": "blue",
    "retrying": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "expired": "magenta",
}
STATUS_STYLES = {"idle": "green", "busy": "bold blue", "draining": "yellow", "disconnected": "red"}


def retry_option(func: F) -> F:
    """``--retry-for``: how long a command keeps trying masters before it gives up."""
    return option(
        "--retry-for",
        type=click.FloatRange(0.1, None),
        default=30.0,
        help="Seconds to keep trying the masters (unreachable, failover in progress) "
        "before giving up.",
    )(func)


def _client(masters: str, token: str | None, ca: str | None, retry_for: float) -> Any:
    from mawex.client import Client

    return Client(masters, token=token, ca=ca, failover_timeout=retry_for)


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


# -- submit ----------------------------------------------------------------------------


def _open_tasks(path: str) -> IO[str]:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_tasks(path: str, group: str | None) -> list[dict[str, Any]]:
    """Parse and check a whole JSONL file before anything is sent."""
    tasks: list[dict[str, Any]] = []
    with _open_tasks(path) as stream:
        try:
            lines = list(stream)
        except (OSError, UnicodeDecodeError) as exc:
            raise Rejected(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Rejected(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(item, dict):
            raise Rejected(f"{path}:{number}: each line must be a JSON object")
        unknown = set(item) - TASK_LINE_FIELDS
        if unknown:
            raise Rejected(f"{path}:{number}: unknown field(s) {', '.join(sorted(unknown))}")
        if "id" not in item:
            raise Rejected(f'{path}:{number}: missing "id"')
        if "group" not in item:
            if group is None:
                raise Rejected(f'{path}:{number}: no "group" and no --group default')
            item["group"] = group
        tasks.append(item)
    if not tasks:
        raise Rejected(f"{path}: no tasks in the file")
    return tasks


@click.command()
@masters_option()
@option("--group", default=None, help="The task's group (default group for --file).")
@option("--id", "task_id", default=None, help="Task id (default: a fresh uuid).")
@option("--payload", default=None, help="JSON payload of one task.")
@option(
    "--file", "file", default=None, help="JSONL file of tasks ('-' for stdin), one object per line."
)
@option(
    "--max-attempts", type=click.IntRange(1, 100), default=None, help="Attempts before failing."
)
@option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0, None, min_open=True),
    default=None,
    help="Per-attempt timeout, seconds.",
)
@option(
    "--wait/--no-wait",
    default=False,
    help="Wait for the result(s) and exit 1 unless all completed.",
)
@token_option()
@ca_option()
@retry_option
def submit(
    masters: str,
    group: str | None,
    task_id: str | None,
    payload: str | None,
    file: str | None,
    max_attempts: int | None,
    timeout_s: float | None,
    wait: bool,
    token: str | None,
    ca: str | None,
    retry_for: float,
) -> None:
    """Submit one task (--payload) or a JSONL file of tasks (--file).

    One task prints its receipt as JSON (and its result with --wait). A file is
    checked whole before anything is sent, then submitted in batches with a
    progress bar on stderr; stdout gets {"accepted": n, "duplicates": n} (and
    {"results": {...}} with --wait). Submitting again is safe: (group, id) is
    idempotent.
    """
    if (payload is None) == (file is None):
        raise click.UsageError("give exactly one of --payload or --file")
    if payload is not None:
        if group is None:
            raise click.UsageError("--group is required with --payload")
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise Rejected(f"--payload is not JSON: {exc.msg}") from None
        with _client(masters, token, ca, retry_for) as client:
            receipt = client.submit(
                group, value, id=task_id, max_attempts=max_attempts, timeout_s=timeout_s
            )
            click.echo(
                json.dumps(
                    {
                        "id": receipt.id,
                        "group": receipt.group,
                        "status": "accepted",
                        "duplicate": receipt.duplicate,
                    }
                )
            )
            if wait:
                _wait_one(client, receipt.group, receipt.id)
        return
    assert file is not None
    if task_id is not None:
        raise click.UsageError("--id goes with --payload; a file gives each task its id")
    tasks = _read_tasks(file, group)
    for task in tasks:
        if max_attempts is not None:
            task.setdefault("max_attempts", max_attempts)
        if timeout_s is not None:
            task.setdefault("timeout_s", timeout_s)
    with _client(masters, token, ca, retry_for) as client:
        start = client.state().get("topic_next", 0) if wait else 0
        started = time.perf_counter()
        accepted, duplicates = _submit_with_progress(client, tasks)
        elapsed = time.perf_counter() - started
        click.echo(json.dumps({"accepted": accepted, "duplicates": duplicates}))
        _console(stderr=True).print(
            f"submitted {len(tasks):,} tasks: {accepted:,} accepted, {duplicates:,} duplicates"
            f" in {elapsed:.2f}s ({len(tasks) / max(elapsed, 1e-9):,.0f} tasks/s)"
        )
        if wait:
            _wait_many(client, tasks, start)


def _progress(description: str, total: int) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=False,
        disable=not sys.stderr.isatty(),
    )
    return progress


def _submit_with_progress(client: Any, tasks: list[dict[str, Any]]) -> tuple[int, int]:
    accepted = duplicates = 0
    chunk = 1000
    with _progress("submitting", len(tasks)) as progress:
        bar = progress.add_task("submitting", total=len(tasks))
        for i in range(0, len(tasks), chunk):
            batch = tasks[i : i + chunk]
            receipt = client.submit_many(batch)
            accepted += receipt.accepted
            duplicates += receipt.duplicates
            progress.advance(bar, len(batch))
    return accepted, duplicates


def _wait_one(client: Any, group: str, id: str) -> None:
    from mawex.errors import TaskFailed

    try:
        value = client.result(group, id)
    except TaskFailed as exc:
        click.echo(
            json.dumps({"id": id, "group": group, "status": exc.task_status, "error": exc.error})
        )
        sys.exit(1)
    click.echo(json.dumps({"id": id, "group": group, "status": "completed", "result": value}))


def _wait_many(client: Any, tasks: list[dict[str, Any]], start: int) -> None:
    remaining = {(t["group"], t["id"]) for t in tasks}
    outcome: Counter[str] = Counter()
    with _progress("running", len(remaining)) as progress:
        bar = progress.add_task("running", total=len(remaining))
        # tasks already finished before (duplicates) will not appear on the topic again
        for key in list(remaining):
            status = client.get(*key).status.value
            if status in TERMINAL:
                outcome[status] += 1
                remaining.discard(key)
                progress.advance(bar)
        for event in client.results(from_offset=start) if remaining else ():
            key = (event.group, event.id)
            if event.type in TERMINAL and key in remaining:
                remaining.discard(key)
                outcome[event.type] += 1
                progress.advance(bar)
                if not remaining:
                    break
    click.echo(json.dumps({"results": dict(outcome)}))
    summary = " · ".join(f"{name} {count:,}" for name, count in sorted(outcome.items()))
    _console(stderr=True).print(f"finished: {summary}")
    if set(outcome) - {"completed"}:
        sys.exit(1)


# -- status ----------------------------------------------------------------------------


@click.command()
@masters_option()
@option("--json", "as_json", is_flag=True, default=False, help="Print the state as JSON.")
@token_option()
@ca_option()
@retry_option
def status(
    masters: str, as_json: bool, token: str | None, ca: str | None, retry_for: float
) -> None:
    """Show the leader, epoch, masters, groups, pods, workers and counts.

    Tables for people; --json prints GET /v1/state as JSON.
    """
    with _client(masters, token, ca, retry_for) as client:
        state = client.state()
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
        return
    print_state(state, _console())


def print_state(state: dict[str, Any], console: Any) -> None:
    """Render a ``GET /v1/state`` body as tables."""
    from rich.markup import escape
    from rich.table import Table

    leader = bool(state.get("leader"))
    role = "[bold green]leader[/]" if leader else "[bold yellow]standby[/]"
    lease = state.get("lease_expires_in_s")
    url = escape(display_url(str(state.get("url") or "")))
    console.print(
        f"master {url} {role} · id {escape(str(state.get('master_id')))}"
        f" · epoch {state.get('epoch')}"
        + (f" · lease expires in {lease:.1f}s" if isinstance(lease, int | float) else "")
    )
    if not leader:
        console.print(f"leader: {escape(display_url(str(state.get('leader_url') or 'unknown')))}")
    masters = state.get("masters") or []
    if masters:
        table = Table("master", "role", "holder", "seen (s ago)", title="masters")
        for m in masters:
            seen = m.get("seen_s_ago")
            table.add_row(
                escape(display_url(str(m.get("url") or ""))),
                str(m.get("role") or ""),
                escape(str(m.get("holder") or "")),
                "" if seen is None else f"{seen:.1f}",
            )
        console.print(table)
    else:
        standbys = state.get("standbys") or []
        console.print("standbys seen: " + (escape(", ".join(map(str, standbys))) or "none"))

    groups = Table("group", "pending", "running", title="groups")
    for name, info in state.get("groups", {}).items():
        groups.add_row(escape(name), f"{info['pending']:,}", f"{info['running']:,}")
    if not state.get("groups"):
        groups.add_row("[dim]none yet[/]", "", "")
    console.print(groups)

    pods = Table("pod", "busy", "task", "workers", title="pods")
    for name, info in state.get("pods", {}).items():
        task = info.get("task")
        pods.add_row(
            escape(name),
            "[bold blue]busy[/]" if info.get("busy") else "[green]idle[/]",
            escape(f"{task['group']}/{task['id']} #{task['attempt']}") if task else "",
            str(info.get("workers", "")),
        )
    if not state.get("pods"):
        pods.add_row("[dim]none[/]", "", "", "")
    console.print(pods)

    workers = Table(
        "pod", "worker", "group", "sandbox", "status", "task", "for (s)", title="workers"
    )
    for w in state.get("workers", []):
        task = w.get("task")
        style = STATUS_STYLES.get(w["status"], "")
        workers.add_row(
            escape(w["pod"]),
            escape(w["id"]),
            escape(w["group"]),
            escape(str(w.get("sandbox", ""))),
            f"[{style}]{w['status']}[/]" if style else w["status"],
            escape(f"{task['group']}/{task['id']} #{task['attempt']}") if task else "",
            "" if w.get("busy_for_s") is None else f"{w['busy_for_s']:.1f}",
        )
    if not state.get("workers"):
        workers.add_row("[dim]none[/]", "", "", "", "", "", "")
    console.print(workers)
    counts = state.get("counts", {})
    console.print(" · ".join(f"{k} {v:,}" for k, v in counts.items()))


# -- results ---------------------------------------------------------------------------


@click.command()
@masters_option()
@option(
    "--from", "from_offset", type=click.IntRange(0), default=0, help="First topic offset to print."
)
@option("--follow/--no-follow", default=False, help="Keep waiting for new events.")
@option(
    "--json",
    "as_json",
    is_flag=True,
    default=False,
    help="JSON lines even on a terminal (the default when stdout is not a terminal).",
)
@token_option()
@ca_option()
@retry_option
def results(
    masters: str,
    from_offset: int,
    follow: bool,
    as_json: bool,
    token: str | None,
    ca: str | None,
    retry_for: float,
) -> None:
    """Print result-topic events: one line each, coloured on a terminal, JSON lines otherwise.

    Each JSON line is {"offset", "type", "id", "group", "attempt", "at", ...} as in
    GET /v1/results. With --follow, wait for new events (across failovers) until
    interrupted.
    """
    pretty = not as_json and _stdout_is_terminal()
    console = _console() if pretty else None
    with _client(masters, token, ca, retry_for) as client:
        for event in client.results(from_offset=from_offset, follow=follow):
            body = {k: v for k, v in _event_dict(event).items() if v is not None}
            if console is not None:
                console.print(format_event(body))
            else:
                click.echo(json.dumps(body))
                sys.stdout.flush()


def format_event(body: dict[str, Any]) -> str:
    """One result-topic event as a line of rich markup."""
    from rich.markup import escape

    kind = str(body.get("type", ""))
    style = EVENT_STYLES.get(kind, "")
    at = body.get("at")
    clock = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else ""
    if kind == "scheduled":
        detail = f"→ {body.get('worker')} in pod {body.get('pod')}"
    elif kind == "completed":
        detail = _short(json.dumps(body.get("result"), separators=(",", ":")), 200)
    else:
        detail = _short(str(body.get("error") or ""), 200)
    head = f"{kind:<9}"
    return (
        f"[dim]{body.get('offset', ''):>8} {clock}[/] "
        + (f"[{style}]{head}[/]" if style else head)
        + f" {escape(str(body.get('group')))}/{escape(str(body.get('id')))}"
        + f" #{body.get('attempt')}  {escape(detail)}"
    )


def _short(text: str, limit: int) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _event_dict(event: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(event)
