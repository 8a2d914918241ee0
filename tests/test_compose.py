"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command is a real
CLI verb, every variable one the program reads, and services start in the right order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from outbox import cli, config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "stover-outbox:local"


# Read by `outbox dashboard` alone, which the compose file does not run.
DASHBOARD_ONLY = {
    "OUTBOX_DASHBOARD_TOKEN",
    "OUTBOX_PORTAL_DATABASE_URL",
    "OUTBOX_PORTAL_FRAME_ANCESTORS",
}


def variables_read() -> set[str]:
    """The environment variables outbox/config.py reads: settings are read there and only there."""
    source = (ROOT / "outbox" / "config.py").read_text(encoding="utf-8")
    return set(re.findall(r"""env\.get\(\s*["']([A-Z][A-Z0-9_]*)["']""", source))


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default}, taking the default (no such variables are set in tests)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == IMAGE or "build" in s}


def command(service: dict[str, Any]) -> list[str]:
    raw = service["command"]
    parts = shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]
    return [interpolate(part) for part in parts]


def test_the_expected_services_are_there(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "migrate", "relay", "receiver"} <= set(services)
    assert set(ours(services)) == {"migrate", "relay", "receiver"}
    assert services["postgres"]["image"].startswith("postgres:16")


def test_every_command_is_a_real_cli_verb(services: dict[str, dict[str, Any]]) -> None:
    parser = cli.build_parser()
    verbs = {}
    for name, service in ours(services).items():
        args = parser.parse_args(command(service))
        assert callable(args.func), name
        verbs[name] = args.command
    assert verbs == {"migrate": "migrate", "relay": "relay", "receiver": "listen"}


def test_the_dockerfile_default_command_is_a_real_cli_verb() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.12-slim\b", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["outbox"\]$', text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user
    assert user[-1] not in {"root", "0"}
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd
    args = cli.build_parser().parse_args(yaml.safe_load(cmd[1]))
    assert args.command == "relay"


def test_every_variable_is_one_the_program_reads(services: dict[str, dict[str, Any]]) -> None:
    known = variables_read()
    assert {"DATABASE_URL", "OUTBOX_RETRY_LADDER", "OUTBOX_TIMEOUT"} <= known
    used: set[str] = set()
    for name, service in ours(services).items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        unknown = set(environment) - known
        assert not unknown, f"{name} sets variables the program never reads: {unknown}"
        used |= set(environment)
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    used |= set(re.findall(r"\b(OUTBOX_[A-Z_]+)=", dockerfile))
    assert used <= known
    # The relay is wired by every setting the program has, but the dashboard's own.
    assert set(services["relay"]["environment"]) == known - DASHBOARD_ONLY


def test_every_setting_in_compose_parses(services: dict[str, dict[str, Any]]) -> None:
    for service in ours(services).values():
        env = {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}
        settings = config.load(env)
        assert settings.database_url


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("relay", "receiver"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["migrate"].get("restart", "no") == "no"


def test_the_relay_scales_and_reports_its_health(services: dict[str, dict[str, Any]]) -> None:
    relay = services["relay"]
    # A fixed name or host port would stop `--scale relay=3` from starting a second container.
    assert "container_name" not in relay
    assert "ports" not in relay
    args = cli.build_parser().parse_args(command(relay))
    assert args.metrics_port is not None
    probe = " ".join(str(part) for part in relay["healthcheck"]["test"])
    assert f"127.0.0.1:{args.metrics_port}/healthz" in probe


def test_the_receiver_listens_beyond_its_own_container(services: dict[str, dict[str, Any]]) -> None:
    args = cli.build_parser().parse_args(command(services["receiver"]))
    assert args.host == "0.0.0.0"  # noqa: S104 - other containers deliver to it
    assert args.secret.startswith("whsec_")
