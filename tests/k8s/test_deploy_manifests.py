"""The example manifests in deploy/k8s: schema-valid, and every mawex command line real.

The schemas are the Kubernetes OpenAPI JSON schemas bundled in the
``kubernetes-validate`` package (no network). Each ``mawex`` command line of a
container (``$(VAR)`` references filled in as Kubernetes would) is parsed with the
click command objects of :mod:`mawex.cli.main`, so an unknown command, flag or
value fails here; ``MAWEX_*`` environment variables must name real options.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from mawex.cli.main import cli

pytestmark = pytest.mark.k8s

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ["1.28.0", "1.33.0"]
SAMPLE_VARS = {"POD_NAME": "mawex-worker-heavy-6d5f-abcde", "POD_IP": "10.42.0.17"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCUMENTS = _documents()


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    yield from pod.get("containers") or []
    yield from pod.get("initContainers") or []


def test_the_expected_objects_are_there() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS}
    assert {
        ("StatefulSet", "mawex-master"),
        ("Service", "mawex-master"),
        ("Deployment", "mawex-worker-heavy"),
        ("ServiceAccount", "mawex-worker"),
        ("Role", "mawex-worker-jobs"),
        ("RoleBinding", "mawex-worker-jobs"),
        ("ConfigMap", "mawex-task-config"),
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_schema_valid(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_role_grants_what_the_k8s_sandbox_needs() -> None:
    (role,) = [doc for _, doc in DOCUMENTS if doc["kind"] == "Role"]
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "list", "watch", "delete"):
        assert ("batch", "jobs", verb) in grants
    for verb in ("get", "list"):
        assert ("", "pods", verb) in grants
    assert ("", "pods/log", "get") in grants
    (deployment,) = [doc for _, doc in DOCUMENTS if doc["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mawex-worker"


def _expand(value: str) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: SAMPLE_VARS[m.group(1)], value)


def _envvars(command: click.Command) -> set[str]:
    names = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


MAWEX_CONTAINERS = [
    (f"{name}:{container['name']}", container)
    for name, doc in DOCUMENTS
    for container in _containers(doc)
    if [*container.get("command", []), *container.get("args", [])][:1] == ["mawex"]
]


def test_there_are_mawex_commands_to_check() -> None:
    assert {name.split(":")[-1] for name, _ in MAWEX_CONTAINERS} >= {"master", "worker"}


@pytest.mark.parametrize(
    ("name", "container"), MAWEX_CONTAINERS, ids=[name for name, _ in MAWEX_CONTAINERS]
)
def test_mawex_command_lines_parse(name: str, container: dict[str, Any]) -> None:
    argv = [_expand(part) for part in [*container.get("command", []), *container.get("args", [])]]
    group_ctx = click.Context(cli, info_name="mawex")
    sub_name = argv[1]
    command = cli.get_command(group_ctx, sub_name)
    assert command is not None, f"no command mawex {sub_name}"
    assert sub_name in {"master", "worker"}
    env = {item["name"] for item in container.get("env") or []}
    with command.make_context(sub_name, argv[2:], parent=group_ctx) as ctx:
        params = ctx.params
    assert params
    unknown = {name for name in env if name.startswith("MAWEX_")} - _envvars(command)
    assert not unknown, f"environment variables that are no {sub_name} option: {unknown}"
    if sub_name == "worker":
        assert params["sandbox"] == "k8s"
        assert params["k8s_image"] and params["advertise_host"] == SAMPLE_VARS["POD_IP"]
        assert params["pod"] == SAMPLE_VARS["POD_NAME"]
        # The configmap the worker mounts is one of the example manifests.
        configmaps = {doc["metadata"]["name"] for _, doc in DOCUMENTS if doc["kind"] == "ConfigMap"}
        assert params["k8s_configmap"] in configmaps
        from mawex.cli.k8s_options import k8s_sandbox_options

        options = k8s_sandbox_options(
            params,
            pod=params["pod"],
            groups=[params["groups"]],
            env=params["sandbox_env"],
            mount_path=params["mount_path"],
        )
        from mawex.sandbox.k8s import K8sSandbox

        K8sSandbox(params["executor"], **options)  # the settings are accepted as they are


def test_a_bad_flag_is_caught() -> None:
    bad = {"command": ["mawex", "worker", "x:y", "--k8s-imagee", "i"]}
    with pytest.raises(click.UsageError):
        test_mawex_command_lines_parse("bad", bad)
