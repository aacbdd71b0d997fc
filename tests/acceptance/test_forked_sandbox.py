"""End to end: real ``mawex master`` and ``mawex worker --sandbox forked`` processes.

Crashing tasks fail clearly and the workers keep serving; a timeout and a cancel kill
the task's whole process group; pods still never run two tasks at once; and no
process is left once the workers stop.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    REPO,
    TopicReader,
    assert_pod_exclusive,
    check_pods_from_topic,
    check_topic,
    key_of,
    start_leader,
    wait_until,
)
from tests.sandbox.conftest import alive, descendants_of, wait_dead

BEHAVES = "tests.sandbox.executors:Behaves"


def read_lines(*paths: Path) -> list[dict[str, Any]]:
    lines = []
    for path in paths:
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def runs_of(lines: list[dict[str, Any]], terminal_at: dict[tuple[str, str], float]) -> list[Any]:
    """One ``{"pod","start","end"}`` per attempt; a run killed before it recorded its end
    ends, at the latest, when the master recorded its terminal event."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = defaultdict(dict)
    for line in lines:
        run = runs[(line["group"], line["id"], line["attempt"])]
        run.update(pod=line["pod"], key=(line["group"], line["id"]))
        if line["phase"] == "start":
            run["start"] = line["time"]
        elif line["phase"] == "end":
            run["end"] = line["time"]
    for run in runs.values():
        run.setdefault("end", terminal_at[run["key"]])
    return list(runs.values())


def test_forked_workers_survive_crashes_and_keep_pods_exclusive(cluster: LocalCluster) -> None:
    cluster.env["PYTHONPATH"] = str(REPO)
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    files = {name: cluster.workdir / f"{name}.jsonl" for name in ("shared-1", "shared-2", "other")}
    workers = {}
    for name, pod in (("shared-1", "shared"), ("shared-2", "shared"), ("other", "other")):
        workers[name] = cluster.start_worker(
            name,
            BEHAVES,
            groups="a,b",
            pod=pod,
            sandbox="forked",
            args={"path": str(files[name]), "pod": pod},
            extra=("--drain-timeout", "2"),
        )
    cluster.wait_workers(6)

    tasks: list[dict[str, Any]] = []
    for i in range(40):
        do = "segfault" if i % 10 == 3 else "exit" if i == 17 else "ok"
        tasks.append({"id": f"t-{i:03d}", "group": "ab"[i % 2], "payload": {"do": do}})
    tasks.append({"id": "slow", "group": "a", "payload": {"do": "hang"}, "timeout_s": 1.5})
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        assert client.submit_many(tasks).accepted == len(tasks)
        reader.wait_terminal([key_of(t) for t in tasks], timeout=120)

        # the workers survived every crash and serve the next tasks
        assert all(proc.alive for proc in workers.values())
        after = [{"id": f"after-{i}", "group": "ab"[i % 2], "payload": {}} for i in range(10)]
        assert client.submit_many(after).accepted == len(after)
        reader.wait_terminal([key_of(t) for t in after], timeout=60)

        # cancelling a running task kills its process group
        client.submit("b", {"do": "hang"}, id="doomed")
        reader.wait_event(("b", "doomed"), "scheduled", timeout=30)
        hung = wait_until(
            lambda: [
                x
                for x in read_lines(*files.values())
                if x["id"] == "doomed" and x["phase"] == "hang"
            ],
            30,
            "the doomed task to start",
        )[0]
        client.cancel("b", "doomed")
        reader.wait_terminal([("b", "doomed")], timeout=30)
        events = reader.read_to_end()

    everything = [*tasks, *after, {"id": "doomed", "group": "b"}]
    terminal = check_topic(events, [key_of(t) for t in everything])
    for task in tasks:
        event = terminal[key_of(task)]
        do = task["payload"]["do"]
        if do == "ok":
            assert event["type"] == "completed", event
        elif do == "segfault":
            assert event["type"] == "failed", event
            assert "killed by SIGSEGV" in event["error"], event["error"]
            assert "Fatal Python error: Segmentation fault" in event["error"]
        elif do == "exit":
            assert event["type"] == "failed" and "exited with code 5" in event["error"], event
        else:
            assert event["type"] == "failed", event
            assert event["error"].startswith("timed out after 1.5s"), event["error"]
    assert all(terminal[key_of(t)]["type"] == "completed" for t in after)
    assert terminal[("b", "doomed")]["type"] == "cancelled"

    lines = read_lines(*files.values())
    hangs = [x for x in lines if x["phase"] == "hang"]
    assert {x["id"] for x in hangs} == {"slow", "doomed"}
    assert hung in hangs
    assert not wait_dead([p for x in hangs for p in (x["pid"], x["grandchild"])]), (
        "a timed-out or cancelled task left processes behind"
    )
    # every run had a process of its own, and no pod ran two at once
    pids = [x["pid"] for x in lines if x["phase"] == "start"]
    assert len(pids) == len(set(pids)) == len(everything)
    assert not {proc.pid for proc in workers.values()} & set(pids)
    runs = runs_of(lines, {key_of(e): e["at"] for e in terminal.values()})
    assert_pod_exclusive(runs)
    check_pods_from_topic(events)
    assert {r["pod"] for r in runs} == {"shared", "other"}

    # stopping the workers leaves no process behind (zygotes included)
    family = [pid for proc in workers.values() for pid in descendants_of(proc.pid)]
    assert family, "each forked worker runs a zygote"
    cluster.stop_all()
    assert not wait_dead(family), f"left alive: {[p for p in family if alive(p)]}"
