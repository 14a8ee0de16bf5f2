"""Register (and activate) the encoder artefact ``METAH_MODEL`` when the model registry has no active model; exit.

The same step ``metah serve`` takes at its start (:func:`service.registry.active_or_registered`), as a one-shot:
docker-compose.yml's ``scale`` profile runs it once (its ``scale-seed`` service) with the demo model, so that the
API replicas need neither the artefact file nor a volume, and do not race each other to register it. The
artefact goes to the blob store (``METAH_BLOB_URL``), its row to the database (``METAH_DATABASE_URL``); the
database must be migrated (``metah migrate``). With a model already active it changes nothing.

    METAH_MODEL=var/demo-photos/demo-model/model.pt python -m scripts.register_model
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.db import Database
from service.registry import active_or_registered
from service.settings import Settings
from service.storage import open_blob_store


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings()
    if settings.model is None:
        print("register_model: METAH_MODEL is not set: nothing to register", file=sys.stderr)
        return 2
    db = Database(settings.sqlalchemy_url)
    try:
        row = active_or_registered(settings, db, open_blob_store(settings))
    finally:
        db.close()
    assert row is not None  # settings.model is set: registered, or another model was already active
    print(f"active model: {row.version} ({row.bits} bits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
