"""``Settings``: environment, defaults and the refusal to serve writes openly on a public address."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service.settings import Settings, is_loopback


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "API_KEY", "MODEL", "HOST", "PORT"):
        monkeypatch.delenv(f"METAH_{name}", raising=False)


def test_defaults_keep_everything_in_the_data_dir() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.api_key, settings.model) == ("127.0.0.1", 8000, None, None)
    assert settings.sqlalchemy_url == f"sqlite:///{(Path('var') / 'metah.db').resolve()}"
    assert settings.is_sqlite and settings.max_upload_bytes == 20 * 1024 * 1024


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METAH_PORT", "9001")
    monkeypatch.setenv("METAH_API_KEY", "secret")
    monkeypatch.setenv("METAH_HOST", "0.0.0.0")
    monkeypatch.setenv("METAH_DATABASE_URL", "postgresql+psycopg://metah@db/metah")
    settings = Settings()
    assert settings.port == 9001 and settings.data_dir == tmp_path and settings.host == "0.0.0.0"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "secret"
    assert "secret" not in repr(settings)
    assert settings.sqlalchemy_url.startswith("postgresql") and not settings.is_sqlite


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_a_public_host_needs_an_api_key(host: str) -> None:
    with pytest.raises(ValidationError, match="METAH_API_KEY"):
        Settings(host=host)
    with pytest.raises(ValidationError, match="METAH_API_KEY"):
        Settings(host=host, api_key=SecretStr("  "))
    assert Settings(host=host, api_key=SecretStr("k")).host == host


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(port=70000)
    with pytest.raises(ValidationError):
        Settings(max_upload_bytes=0)
