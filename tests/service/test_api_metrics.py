"""``GET /metrics``: Prometheus text with per-route latency, search stage timings, index size and jobs."""

from __future__ import annotations

import re

import httpx

from tests.service.conftest import LiveServer, post_image, search


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{sample} not in /metrics"
    return float(match.group(1))


def test_metrics_report_routes_stages_and_index_size(
    server: LiveServer, client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    for data, label in digit_pngs[:3]:
        assert post_image(client, data, label=label).status_code == 201
    # the first search after writes may catch the index up and search it again (service.retrieval): count the
    # stages of the two searches after it, when nothing has changed, one of each per search
    assert search(client, digit_pngs[0][0], k=2).status_code == 200
    before = client.get("/metrics").text
    for data, _ in digit_pngs[:2]:
        assert search(client, data, k=2).status_code == 200
    assert client.get("/v1/images/987654").status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _value(text, 'metah_http_request_seconds_count{method="POST",route="/v1/search",status="200"}') == 3
    assert _value(text, 'metah_http_request_seconds_count{method="POST",route="/v1/images",status="201"}') == 3
    assert (
        _value(text, 'metah_http_request_seconds_count{method="GET",route="/v1/images/{image_id}",status="404"}') == 1
    )
    for stage in ("decode", "encode", "search", "hydrate"):
        sample = f'metah_stage_seconds_count{{stage="{stage}"}}'
        assert _value(text, sample) - _value(before, sample) == 2
    passes = _value(text, "metah_encode_pass_images_count") - _value(before, "metah_encode_pass_images_count")
    assert passes == 2  # one after the other: a pass of one upload each
    assert _value(text, 'metah_encode_pass_images_bucket{le="1.0"}') == _value(text, "metah_encode_pass_images_count")
    assert _value(text, "metah_indexed_images") == 3
    assert "# TYPE metah_jobs gauge" in text
