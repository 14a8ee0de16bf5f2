"""The service benchmarks' pure helpers, ``workbench.loadtest`` (no server, no timing assertions)."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from workbench.loadtest import (
    Call,
    Upload,
    latency_summary,
    load_test,
    percentile,
    photo_sets,
    ratio,
    stage_means_ms,
    stage_totals,
    targets,
    zip_archive,
)

EXPOSITION = """\
# HELP metah_stage_seconds Search pipeline stage latency
# TYPE metah_stage_seconds histogram
metah_stage_seconds_bucket{le="0.0005",stage="decode"} 1.0
metah_stage_seconds_count{stage="decode"} 4.0
metah_stage_seconds_sum{stage="decode"} 0.008
metah_stage_seconds_created{stage="decode"} 1.7e+09
metah_stage_seconds_count{stage="encode"} 4.0
metah_stage_seconds_sum{stage="encode"} 0.002
"""


def test_percentile_and_summary() -> None:
    samples = [0.001 * i for i in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(0.0505)
    assert percentile(samples, 100) == pytest.approx(0.1)
    assert math.isnan(percentile([], 50))
    summary = latency_summary(samples)
    assert summary["count"] == 100
    assert summary["median_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == pytest.approx(50.5)


def test_ratio() -> None:
    assert ratio(7.0, 10.0) == pytest.approx(0.7)
    assert math.isnan(ratio(1.0, 0.0))


def test_stage_means_from_two_scrapes() -> None:
    before = {"decode": {"count": 2.0, "sum": 0.002}}
    after = stage_totals(EXPOSITION)
    assert after == {"decode": {"count": 4.0, "sum": 0.008}, "encode": {"count": 4.0, "sum": 0.002}}
    means = stage_means_ms(before, after)
    assert means["decode"] == pytest.approx(3.0)
    assert means["encode"] == pytest.approx(0.5)


def test_zip_archive_has_a_manifest_naming_every_image() -> None:
    uploads = [Upload(b"png-a", "3", "usps"), Upload(b"png-b", "7", "mnist_m")]
    with zipfile.ZipFile(io.BytesIO(zip_archive(uploads))) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
        assert [(r["label"], r["domain"]) for r in rows] == [("3", "usps"), ("7", "mnist_m")]
        assert [archive.read(r["path"]) for r in rows] == [b"png-a", b"png-b"]


def test_zip_archive_keeps_each_image_s_suffix() -> None:
    uploads = [Upload(b"jpeg", "dog", "photo", ".jpg"), Upload(b"png", "3", "usps")]
    with zipfile.ZipFile(io.BytesIO(zip_archive(uploads))) as archive:
        assert [n for n in archive.namelist() if n != "manifest.csv"] == ["photo/000000.jpg", "usps/000001.png"]
    assert (uploads[0].media_type, uploads[1].media_type) == ("image/jpeg", "image/png")


def test_photo_sets_hold_queries_out_of_the_library_evenly(tmp_path: Path) -> None:
    for domain in ("photo", "cartoon"):
        for label in ("dog", "house"):
            (tmp_path / domain / label).mkdir(parents=True)
            for i in range(5):
                (tmp_path / domain / label / f"{i}.jpg").write_bytes(f"{domain}-{label}-{i}".encode())
    library, queries = photo_sets(tmp_path, ("photo", "cartoon"), queries=5, seed=0)
    assert len(library) == 15 and len(queries) == 5
    assert not {u.data for u in library} & {u.data for u in queries}
    assert [u.domain for u in queries].count("photo") == 3 and library[0].domain == "photo"
    assert all(u.data.decode().startswith(f"{u.domain}-{u.label}-") and u.suffix == ".jpg" for u in library)
    again, _ = photo_sets(tmp_path, ("photo", "cartoon"), queries=5, seed=0)
    assert again == library


def test_load_test_counts_every_request_and_error() -> None:
    @contextmanager
    def open_call() -> Iterator[Call]:
        def call(i: int) -> bool:
            if i % 5 == 0:
                raise RuntimeError("boom")
            return i % 5 != 1

        yield call

    row = load_test(open_call, clients=3, duration_s=60, max_requests=50)
    assert row["requests"] == 50
    assert row["errors"] == 20  # i % 5 in (0, 1)
    assert row["first_failures"] and "boom" in row["first_failures"][0]


def test_targets_say_met_or_missed() -> None:
    results = {
        "ingestion": {"job_ratio": 0.5},
        "search": {
            "median_overhead_ms": 2.4,
            "median_overhead_plain_ms": 1.2,
            "cpu_ms": {"client": {"median_ms": 1.1}},
            "distance_mismatches": 0,
            "errors": 0,
        },
        "concurrency": [{"errors": 0}, {"errors": 2}],
    }
    lines = targets(results)
    assert lines[0].endswith("MISSED") and lines[1].endswith(": met") and lines[2].endswith("MISSED")
    assert "http.client" in lines[1] and "httpx 2.40 ms, the client's own CPU 1.10 ms" in lines[2]
    assert lines[3].endswith(": met") and lines[4].endswith("MISSED")
