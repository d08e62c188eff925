"""docker-compose.yml is a valid Compose file wiring the local stack around one Discograph image."""

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DISCOGRAPH_SERVICES = ("anvil", "migrate", "deploy", "indexer", "api", "minter")


def _services() -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merge keys the file uses, as Compose does.
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker-compose.yml <args>`; skips the test without the Compose plugin."""
    try:
        probe = subprocess.run(
            ["docker", "compose", "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError as exc:
        pytest.skip(f"docker compose plugin not installed: {exc}")
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        pytest.skip(f"docker compose plugin not installed: {' '.join(reason)}")
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_compose_file_is_accepted_by_docker_compose() -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_runs_two_indexers_and_two_api_replicas() -> None:
    services = _services()
    assert services["indexer"]["command"] == ["index"]
    assert services["indexer"]["deploy"]["replicas"] == 2
    assert services["api"]["command"] == ["api"]
    assert services["api"]["deploy"]["replicas"] == 2


def test_compose_runs_one_minter_and_keeps_the_key_out_of_the_api() -> None:
    services = _services()
    assert services["minter"]["command"] == ["minter"]
    assert "replicas" not in services["minter"].get("deploy", {})
    assert "MINTER_PRIVATE_KEY" in services["minter"]["environment"]
    assert "MINTER_PRIVATE_KEY" not in services["api"]["environment"]
    assert services["api"]["environment"]["JWT_SECRET"]


def test_compose_declares_the_local_stack_services() -> None:
    services = _services()
    assert {"postgres", "redis", *DISCOGRAPH_SERVICES} <= services.keys()
    assert "healthcheck" in services["postgres"]
    assert "healthcheck" in services["redis"]


def test_every_discograph_service_runs_the_same_image() -> None:
    services = _services()
    images = {
        (services[name]["image"], repr(services[name]["build"])) for name in DISCOGRAPH_SERVICES
    }
    assert len(images) == 1, images
    assert services["anvil"]["entrypoint"] == ["anvil"]


def test_setup_jobs_run_in_dependency_order() -> None:
    services = _services()
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    deploy_deps = services["deploy"]["depends_on"]
    assert deploy_deps["migrate"]["condition"] == "service_completed_successfully"
    assert "anvil" in deploy_deps
