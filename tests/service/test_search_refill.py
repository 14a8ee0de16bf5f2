"""Searches keep returning ``k`` hits when rows were deleted after the serving index was read.

The rows are deleted straight in the database, without a ``changes`` entry, so the index keeps their ids: the
state a search meets between a delete's commit and the index's catch-up.
"""

from __future__ import annotations

import httpx
from sqlalchemy import delete

from service.db import Database
from service.models import Code, Image
from tests.service.conftest import LiveServer, post_image, search


def _delete_behind_the_index(server: LiveServer, ids: list[int]) -> None:
    db = Database(server.settings.sqlalchemy_url)
    try:
        with db.session() as session:
            session.execute(delete(Code).where(Code.image_id.in_(ids)))
            session.execute(delete(Image).where(Image.id.in_(ids)))
            session.commit()
    finally:
        db.close()


def test_search_refills_hits_whose_rows_are_gone(
    server: LiveServer, client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    for data, label in digit_pngs[:12]:
        assert post_image(client, data, label=label).status_code == 201
    query = digit_pngs[0][0]
    ranking = [(hit["id"], hit["distance"]) for hit in search(client, query, k=12).json()["hits"]]
    assert len(ranking) == 12
    gone = [image_id for image_id, _ in ranking[:4]]  # the four nearest: a first answer of k=5 keeps only one
    _delete_behind_the_index(server, gone)
    survivors = [hit for hit in ranking if hit[0] not in gone]

    hits = search(client, query, k=5).json()["hits"]
    assert [(hit["id"], hit["distance"]) for hit in hits] == survivors[:5]
    everything = search(client, query, k=50).json()["hits"]  # more than the index holds: all survivors
    assert [(hit["id"], hit["distance"]) for hit in everything] == survivors

    similar = client.post(f"/v1/images/{survivors[0][0]}/similar", params={"k": 5}).json()["hits"]
    assert len(similar) == 5 and not {hit["id"] for hit in similar} & {*gone, survivors[0][0]}
