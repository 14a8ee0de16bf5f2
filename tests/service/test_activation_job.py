"""The activation job's handler against a real SQLite database and blob store (no HTTP server): which model
versions keep their codes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from service import repository
from service.jobs import activation, queue
from service.models import Code
from service.registry import register_artefact
from tests.service.library import Library, open_library


def _codes_per_version(library: Library) -> Counter[str]:
    with library.db.session() as session:
        return Counter(session.scalars(select(Code.model_version)))


def _activate(library: Library, version: str) -> dict[str, object]:
    job_id = activation.enqueue_activation(library.db, version)
    assert library.worker.run_once()
    job = library.job(job_id)
    assert job.status == queue.SUCCEEDED, job.errors
    return job.result


def test_an_activation_keeps_the_codes_of_the_new_and_the_previous_model_only(
    tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "ROW_CHUNK", 4)  # codes are removed a range of image ids at a time: two here
    with open_library(tmp_path) as library:
        ids = library.add([(data, "usps", label) for data, label in digit_pngs[:6]])
        new = register_artefact(library.db, library.worker.store, api_artefact, activate=False).version
        with library.db.session() as session:  # two older models with codes of every image; "previous" serves
            for version in ("older", "previous"):
                repository.add_model(session, version=version, artefact_path="gone.pt", bits=16, metrics={}, meta={})
                session.add_all(Code(image_id=i, model_version=version, code=b"\0\0") for i in ids)
            session.flush()
            repository.activate_model(session, "previous")
            session.commit()

        result = _activate(library, new)
        assert _codes_per_version(library) == {new: 6, "previous": 6}  # the rollback target stays
        assert (result["encoded"], result["removed_codes"]) == (6, 6)
        with library.db.session() as session:
            assert repository.active_model(session).version == new  # type: ignore[union-attr]

        again = _activate(library, new)  # the active model once more: nothing changes, nothing is removed
        assert _codes_per_version(library) == {new: 6, "previous": 6}
        assert (again["encoded"], again["removed_codes"]) == (0, 0)
