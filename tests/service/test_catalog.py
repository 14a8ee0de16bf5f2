"""The columns of a new image's row are listed once (:func:`service.catalog.image_values`)."""

from __future__ import annotations

from sqlalchemy import inspect

from service.catalog import NewImage, image_row, image_values
from service.models import Image
from service.pipeline import ImageInfo


def test_image_values_name_every_column_a_writer_sets() -> None:
    values = image_values("ab" * 32, ImageInfo("image/png", 28, 21), 123, "images/x", NewImage("usps", "3", {"a": 1}))
    written_by_the_database = {"id", "created_at"}
    assert set(values) == {c.key for c in inspect(Image).column_attrs} - written_by_the_database
    row = image_row("ab" * 32, ImageInfo("image/png", 28, 21), 123, "images/x", NewImage("usps", "3", {"a": 1}))
    assert {key: getattr(row, key) for key in values} == values
    assert (values["width"], values["height"], values["size_bytes"], values["meta"]) == (28, 21, 123, {"a": 1})
