"""``GET /v1/domains`` (additive to CONTRACT §4): the domains holding stored images with their counts, from the
database, following adds and deletes; open to reads without a key."""

from __future__ import annotations

import httpx

from tests.service.conftest import post_image


def test_domains_are_listed_by_name_with_their_image_counts(
    client: httpx.Client, anonymous: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    assert client.get("/v1/domains").json() == {"domains": []}

    ids = {}
    for index, (data, label) in enumerate(digit_pngs[:6]):
        domain = "usps" if index < 4 else "mnist"
        response = post_image(client, data, label=label, domain=domain)
        assert response.status_code == 201, response.text
        ids[index] = response.json()["id"]
    assert post_image(client, digit_pngs[0][0], domain="usps").status_code == 200  # already stored: no new row
    assert post_image(client, digit_pngs[0][0], domain="sketch").status_code == 201  # same bytes, other domain

    response = anonymous.get("/v1/domains")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "domains": [{"name": "mnist", "count": 2}, {"name": "sketch", "count": 1}, {"name": "usps", "count": 4}]
    }

    assert client.delete(f"/v1/images/{ids[0]}").status_code == 204
    for index in (4, 5):
        assert client.delete(f"/v1/images/{ids[index]}").status_code == 204
    assert client.get("/v1/domains").json() == {
        "domains": [{"name": "sketch", "count": 1}, {"name": "usps", "count": 3}]  # an emptied domain is gone
    }


def test_domains_are_in_the_openapi_schema(anonymous: httpx.Client) -> None:
    schema = anonymous.get("/openapi.json").json()
    assert "get" in schema["paths"]["/v1/domains"]
    assert set(schema["components"]["schemas"]["DomainCount"]["properties"]) == {"name", "count"}
