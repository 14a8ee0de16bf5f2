"""The environment ``metah serve`` gives its job worker processes."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from service.jobs.process import settings_env
from service.settings import Settings
from tests.service.conftest import API_KEY, make_settings


def test_workers_get_the_settings_but_not_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAH_API_KEY", "a-key-from-the-parent-environment")
    settings = make_settings(tmp_path.resolve(), workers=2, ingest_batch_size=7)
    env = settings_env(settings)
    assert "METAH_API_KEY" not in env
    assert not [name for name, value in env.items() if API_KEY in value or "from-the-parent" in value]
    with mock.patch.dict(os.environ, env, clear=True):
        rebuilt = Settings()
    assert rebuilt.api_key is None
    assert rebuilt.model_dump(exclude={"api_key"}) == settings.model_dump(exclude={"api_key"})
