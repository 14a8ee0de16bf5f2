"""scripts/register_model.py, the one-shot that seeds the model registry (docker-compose.yml's ``scale-seed``): it
registers and activates ``METAH_MODEL`` when no model is active, and changes nothing afterwards. Here on SQLite and
the local blob store; the compose profile runs it on PostgreSQL and S3 through the same registry functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import TrainConfig
from model.train import train
from scripts import register_model
from service import repository
from service.db import Database
from service.migrate import upgrade
from service.settings import Settings
from service.storage import model_key, open_blob_store
from tests.conftest import DigitFolders


@pytest.fixture(scope="module")
def tiny_artefact(digits: DigitFolders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(iterations=5, batch_size=16, bits=16, eval_queries=20)
    return train(config, digits.source, digits.target, tmp_path_factory.mktemp("seed"), show_progress=False).paths.model


def _active_versions(settings: Settings) -> list[str]:
    db = Database(settings.sqlalchemy_url)
    try:
        with db.session() as session:
            active = repository.active_model(session)
            return [row.version for row in repository.list_models(session)] + ([active.version] if active else [])
    finally:
        db.close()


def test_registers_once_then_changes_nothing(
    tiny_artefact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METAH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("METAH_MODEL", str(tiny_artefact))
    for name in ("METAH_DATABASE_URL", "METAH_BLOB_URL", "METAH_API_KEY", "METAH_HOST", "METAH_INDEX_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.argv", ["register_model"])
    settings = Settings()
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.sqlalchemy_url)

    assert register_model.main() == 0
    versions = _active_versions(settings)
    assert len(versions) == 2 and versions[0] == versions[1]  # one model, and it is the active one
    version = versions[0]
    assert open_blob_store(settings).get(model_key(version)) == tiny_artefact.read_bytes()
    assert f"active model: {version} (16 bits)" in capsys.readouterr().out

    assert register_model.main() == 0  # every later start of the profile: nothing to do
    assert _active_versions(settings) == [version, version]

    monkeypatch.setenv("METAH_MODEL", "")
    assert register_model.main() == 2
    assert "METAH_MODEL is not set" in capsys.readouterr().err
