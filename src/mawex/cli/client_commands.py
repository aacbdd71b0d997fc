"""``mawex submit``, ``mawex status`` and ``mawex results``: the client side of the CLI."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mawex.cli.options import ca_option, masters_option, option, token_option
from mawex.errors import Rejected

TASK_LINE_FIELDS = frozenset({"id", "group", "payload", "max_attempts", "timeout_s"})
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


def _client(masters: str, token: str | None, ca: str | None) -> Any:
    from mawex.client import Client

    return Client(masters, token=token, ca=ca)


def _read_tasks(path: str, group: str | None) -> list[dict[str, Any]]:
    """Parse and check a whole JSONL file before anything is sent."""
    tasks: list[dict[str, Any]] = []
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, 1):
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
) -> None:
    """Submit one task (--payload) or a JSONL file of tasks (--file)."""
    if (payload is None) == (file is None):
        raise click.UsageError("give exactly one of --payload or --file")
    with _client(masters, token, ca) as client:
        if payload is not None:
            if group is None:
                raise click.UsageError("--group is required with --payload")
            try:
                value = json.loads(payload)
            except json.JSONDecodeError as exc:
                raise Rejected(f"--payload is not JSON: {exc.msg}") from None
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
        tasks = _read_tasks(file, group)
        for task in tasks:
            if max_attempts is not None:
                task.setdefault("max_attempts", max_attempts)
            if timeout_s is not None:
                task.setdefault("timeout_s", timeout_s)
        start = client.state().get("topic_next", 0) if wait else 0
        accepted, duplicates = _submit_with_progress(client, tasks)
        click.echo(json.dumps({"accepted": accepted, "duplicates": duplicates}))
        if wait:
            _wait_many(client, tasks, start)


def _submit_with_progress(client: Any, tasks: list[dict[str, Any]]) -> tuple[int, int]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    accepted = duplicates = 0
    chunk = 1000
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=not sys.stderr.isatty(),
        console=_stderr_console(),
    ) as progress:
        bar = progress.add_task("submitting", total=len(tasks))
        for i in range(0, len(tasks), chunk):
            receipt = client.submit_many(tasks[i : i + chunk])
            accepted += receipt.accepted
            duplicates += receipt.duplicates
            progress.advance(bar, len(tasks[i : i + chunk]))
    return accepted, duplicates


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


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
    outcome: dict[str, int] = {}
    # tasks that were already finished before (duplicates) will not appear on the topic again
    for key in list(remaining):
        status = client.get(*key).status.value
        if status in TERMINAL:
            outcome[status] = outcome.get(status, 0) + 1
            remaining.discard(key)
    for event in client.results(from_offset=start) if remaining else ():
        key = (event.group, event.id)
        if event.type in TERMINAL and key in remaining:
            remaining.discard(key)
            outcome[event.type] = outcome.get(event.type, 0) + 1
            if not remaining:
                break
    click.echo(json.dumps({"results": outcome}))
    if set(outcome) - {"completed"}:
        sys.exit(1)


@click.command()
@masters_option()
@option("--json", "as_json", is_flag=True, default=False, help="Print the raw state as JSON.")
@token_option()
@ca_option()
def status(masters: str, as_json: bool, token: str | None, ca: str | None) -> None:
    """Show leader, epoch, lease, groups, pods, workers and counts."""
    with _client(masters, token, ca) as client:
        state = client.state()
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
        return
    _print_state(state)


def _print_state(state: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    role = "leader" if state.get("leader") else "standby"
    lease = state.get("lease_expires_in_s")
    console.print(
        f"[bold]master[/] {state.get('url') or ''} ({role}) · master id {state.get('master_id')}"
        f" · epoch {state.get('epoch')} · leader {state.get('leader_url') or 'unknown'}"
        + (f" · lease expires in {lease:.1f}s" if isinstance(lease, int | float) else "")
    )
    if state.get("lease_holder"):
        console.print(f"lease held by {state['lease_holder']}")
    standbys = state.get("standbys") or []
    console.print("standbys seen: " + (", ".join(str(s) for s in standbys) or "none"))
    masters = state.get("masters") or []
    if masters:
        table = Table("master", "role", "holder", "seen (s ago)", title="masters")
        for m in masters:
            seen = m.get("seen_s_ago")
            table.add_row(
                str(m.get("url") or ""),
                str(m.get("role") or ""),
                str(m.get("holder") or ""),
                "" if seen is None else f"{seen:.1f}",
            )
        console.print(table)
    groups = Table("group", "pending", "running", title="groups")
    for name, info in state.get("groups", {}).items():
        groups.add_row(name, str(info["pending"]), str(info["running"]))
    console.print(groups)
    pods = Table(
        "pod", "worker", "group", "sandbox", "status", "task", "for (s)", title="pods and workers"
    )
    for w in state.get("workers", []):
        task = w.get("task")
        pods.add_row(
            w["pod"],
            w["id"],
            w["group"],
            w.get("sandbox", ""),
            w["status"],
            f"{task['group']}/{task['id']} #{task['attempt']}" if task else "",
            "" if w.get("busy_for_s") is None else f"{w['busy_for_s']:.1f}",
        )
    console.print(pods)
    counts = state.get("counts", {})
    console.print(" · ".join(f"{k} {v}" for k, v in counts.items()))


@click.command()
@masters_option()
@option(
    "--from", "from_offset", type=click.IntRange(0), default=0, help="First topic offset to print."
)
@option("--follow/--no-follow", default=False, help="Keep waiting for new events.")
@token_option()
@ca_option()
def results(
    masters: str, from_offset: int, follow: bool, token: str | None, ca: str | None
) -> None:
    """Print result-topic events as JSON lines."""
    with _client(masters, token, ca) as client:
        try:
            for event in client.results(from_offset=from_offset, follow=follow):
                body = {k: v for k, v in _event_dict(event).items() if v is not None}
                click.echo(json.dumps(body))
                sys.stdout.flush()
        except BrokenPipeError:
            return


def _event_dict(event: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(event)
