"""Jobs in a real browser: an archive ingested with a progress bar, a tiny training job followed live, the new
version activated from the model table, its plots; a queued job cancelled; a refused training request; an
archive's upload progress before its job exists; every error of a job, a page at a time."""

from __future__ import annotations

import random
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from service.registry import PLOT_FILES
from tests.conftest import DigitFolders
from tests.service.test_api_jobs import JOB_SETTINGS, WorkerThread, zip_of
from tests.ui.conftest import LiveServer, PNGs, StartServer, open_ui, screenshot, seed, upload

JOB_TIMEOUT_MS = 90_000


@pytest.fixture
def jobs_server(start_server: StartServer) -> Iterator[LiveServer]:
    """An empty server (only its model) with a job worker."""
    live = start_server(**JOB_SETTINGS)
    worker = WorkerThread(live).start()
    yield live
    worker.stop()


def test_archive_training_and_activation_with_live_progress(
    page: Page, jobs_server: LiveServer, digits: DigitFolders, digit_pngs: PNGs
) -> None:
    mnist = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[::8]]
    seed(jobs_server.client(), digit_pngs[:30], "usps")

    # An ImageFolder archive through the library page, followed to the end with its progress bar.
    open_ui(page, jobs_server, "library")
    page.set_input_files("#archive-file", upload(zip_of(mnist), "mnist.zip", "application/zip"))
    page.fill("#archive-domain", "mnist")
    page.click("#archive-form button[type=submit]")
    card = page.locator("#archive-job .job-card")
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(card.locator(".progress-text")).to_have_text(f"{len(mnist)} / {len(mnist)} (100 %)")
    expect(card.locator("progress")).to_have_js_property("value", len(mnist))
    expect(card.locator(".job-summary")).to_have_text(f"{len(mnist)} added, 0 already stored, 0 failed")
    page.fill("#filter-domain", "mnist")
    page.click("#library-filter button[type=submit]")
    expect(page.locator("#library-grid figure")).to_have_count(len(mnist))
    screenshot(page, "archive-ingested")

    # A tiny training job from the models page; its row shows the progress until it has succeeded.
    page.click("[data-tab=models]")
    models = page.locator("#models-table tbody tr")
    expect(models).to_have_count(1)
    old_version = models.first.get_attribute("data-version")
    assert old_version is not None
    # Only backbones that train well here are offered, and the form says why the ResNets are not.
    offered = page.locator("#train-backbone option").evaluate_all("options => options.map(o => o.value)")
    assert offered == ["auto", "efficientnet_lite0", "efficientnet_lite2", "lenet"]
    expect(page.locator("#train-backbone-note")).to_contain_text("ResNet-18/50 are not offered here")
    expect(page.locator("#train-mode")).to_have_value("auto")
    page.fill("#train-source", "mnist")
    page.fill("#train-target", "usps")
    page.select_option("#train-bits", "16")
    # Left empty, the length is the mode's (the API gets null); this job asks for 20 steps.
    expect(page.locator("#train-iterations")).to_have_value("")
    placeholder = re.compile(r"3600 frozen, 1200 finetune")
    expect(page.locator("#train-iterations")).to_have_attribute("placeholder", placeholder)
    page.fill("#train-iterations", "20")
    page.click("#train-form button[type=submit]")
    expect(page.locator("#train-notice")).to_contain_text(re.compile(r"Training job #\d+ queued"))
    job_id = re.findall(r"#(\d+)", page.locator("#train-notice").inner_text())[0]
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    expect(row).to_be_visible()
    expect(row.locator("progress")).to_be_visible()
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".progress-text")).to_have_text("20 / 20 (100 %)")
    expect(row.locator("progress")).to_have_js_property("value", 20)

    # The new version is listed with its metrics and activated from its row.
    trained = jobs_server.client().get(f"/v1/jobs/{job_id}").json()["result"]
    new_version = trained["version"]
    assert (trained["backbone"], trained["mode"]) == ("lenet", "finetune")  # auto, from 28 px digits
    expect(row.locator(".job-summary")).to_contain_text(f"model {new_version}")
    expect(models).to_have_count(2)
    new_row = page.locator(f"#models-table tr[data-version='{new_version}']")
    expect(new_row.locator(".metrics")).to_contain_text("source_vs_source: MAP")
    new_row.get_by_role("button", name="Activate").click()
    expect(page.locator("#models-notice")).to_contain_text("Activation job #")
    activation = page.locator("#jobs-table tr[data-kind='activate']")
    expect(activation).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(new_row.locator(".badge")).to_have_text("active")
    expect(page.locator(f"#models-table tr[data-version='{old_version}'] .activate")).to_be_visible()
    expect(page.locator("#server-status")).to_contain_text(f"model {new_version}")

    # The training run's plots: a training job always stores both beside its artefact, and both are shown.
    folder = jobs_server.settings.models_dir / new_version
    assert [name for name in PLOT_FILES if not (folder / name).is_file()] == []
    row.get_by_role("button", name="Plots").click()
    expect(page.locator("#plots figure.plot")).to_have_count(len(PLOT_FILES))
    for name in PLOT_FILES:
        figure = page.locator(f"#plots figure[data-plot='{name}']")
        expect(figure).to_have_class(re.compile(r"\bloaded\b"))
        assert figure.locator("img").evaluate("image => image.naturalWidth") > 0, name
    expect(page.locator("#plots .missing")).to_have_count(0)
    screenshot(page, "models-and-jobs")

    # A version whose folder lacks a figure shows a clear note in its place, and the figure it has.
    old_folder = jobs_server.settings.models_dir / old_version
    (old_folder / "pr_curve.png").unlink()
    page.locator(f"#models-table tr[data-version='{old_version}']").get_by_role("button", name="Plots").click()
    expect(page.locator("#plots h3")).to_contain_text(old_version)
    expect(page.locator("#plots figure[data-plot='pr_curve.png'] .missing")).to_contain_text("stored for this version")
    expect(page.locator("#plots figure[data-plot='loss_curves.png']")).to_have_class(re.compile(r"\bloaded\b"))


def test_a_queued_job_is_cancelled_and_a_refused_request_explained(page: Page, library_server: LiveServer) -> None:
    open_ui(page, library_server, "models")  # this server runs no worker: jobs stay queued
    page.fill("#train-source", "not a domain!")
    page.fill("#train-target", "usps")
    page.click("#train-form button[type=submit]")
    expect(page.locator("#train-error")).to_contain_text("source_domain: String should match pattern")

    page.fill("#train-source", "mnist")
    page.click("#train-form button[type=submit]")
    row = page.locator("#jobs-table tr[data-kind='train']")
    expect(row).to_have_attribute("data-status", "queued")
    row.get_by_role("button", name="Cancel").click()
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)

    page.select_option("#jobs-status", "queued")
    expect(page.locator("#jobs-empty")).to_be_visible()
    page.select_option("#jobs-status", "cancelled")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)


def test_an_archive_upload_shows_its_progress_before_the_job_exists(
    page: Page, jobs_server: LiveServer, digits: DigitFolders
) -> None:
    images = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[:6]]
    padding = ("padding.bin", random.Random(0).randbytes(1536 * 1024))  # incompressible: 1.5 MiB on the wire
    archive = zip_of([*images, padding], compression=zipfile.ZIP_STORED)

    open_ui(page, jobs_server, "library")
    # Uploads on loopback are instant; the browser's own network throttling makes this one take about 3 s.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 512 * 1024},
    )
    page.evaluate(_RECORD_UPLOAD_PROGRESS)
    page.set_input_files("#archive-file", upload(archive, "padded.zip", "application/zip"))
    page.fill("#archive-domain", "mnist")
    page.click("#archive-form button[type=submit]")

    uploading = page.locator("#archive-job .upload-card")
    expect(uploading).to_contain_text("Uploading padded.zip")
    expect(page.locator("#archive-form button[type=submit]")).to_be_disabled()  # no second upload meanwhile
    card = page.locator("#archive-job .job-card[data-job-id]")
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(uploading).to_have_count(0)
    expect(page.locator("#archive-form button[type=submit]")).to_be_enabled()

    seen: list[dict[str, Any]] = page.evaluate("() => window.uploadProgress")
    sent = [entry["value"] for entry in seen]
    total = seen[-1]["max"]
    assert total >= len(archive)  # the multipart body: the archive and the form fields
    assert sent == sorted(sent)
    partial = [entry for entry in seen if 0 < entry["value"] < total]
    assert len(partial) >= 2, seen  # progress while the bytes went out, not only at the start and the end
    assert all(re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB) / 1\.\d MiB \(\d{1,2} %\)", entry["text"]) for entry in partial)
    assert seen[-1]["value"] == total


def test_every_error_of_a_job_is_shown_a_page_at_a_time(
    page: Page, jobs_server: LiveServer, digits: DigitFolders
) -> None:
    good = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[:2]]
    bad = [(f"broken/{i:02d}.png", f"not an image {i}".encode()) for i in range(23)]
    open_ui(page, jobs_server, "library")
    page.set_input_files("#archive-file", upload(zip_of(good + bad), "broken.zip", "application/zip"))
    page.fill("#archive-domain", "mnist")
    page.click("#archive-form button[type=submit]")
    card = page.locator("#archive-job .job-card[data-job-id]")
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(card.locator(".job-summary")).to_have_text("2 added, 0 already stored, 23 failed")
    job_id = card.get_attribute("data-job-id")
    errors = [f"{e['item']}: {e['message']}" for e in jobs_server.client().get(f"/v1/jobs/{job_id}").json()["errors"]]
    assert len(errors) == 23

    assert _error_pages(page, card.locator(".job-errors")) == errors
    screenshot(page, "job-errors")

    # The same in the jobs table, where the list starts folded.
    page.click("[data-tab=models]")
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    expect(row.locator(".job-errors .error-list")).to_be_hidden()
    row.locator(".job-errors summary").click()
    assert _error_pages(page, row.locator(".job-errors")) == errors


def _error_pages(page: Page, box: Locator) -> list[str]:
    """Every error line of a job's error list, read page by page with Next, checking the page controls."""
    expect(box.locator("summary")).to_have_text("23 errors")
    prev, next_ = box.get_by_role("button", name="Previous"), box.get_by_role("button", name="Next")
    lines: list[str] = []
    for first, last in ((1, 10), (11, 20), (21, 23)):
        expect(box.locator(".error-range")).to_have_text(f"{first}–{last} of 23")
        expect(box.locator(".error-list li")).to_have_count(last - first + 1)
        expect(prev).to_be_enabled() if first > 1 else expect(prev).to_be_disabled()
        lines += box.locator(".error-list li").all_inner_texts()
        if last < 23:
            next_.click()
    expect(next_).to_be_disabled()
    prev.click()
    expect(box.locator(".error-range")).to_have_text("11–20 of 23")
    return lines


# Every state the upload's progress bar takes, recorded by the page itself (the test only reads it afterwards).
_RECORD_UPLOAD_PROGRESS = """() => {
    window.uploadProgress = [];
    const box = document.getElementById("archive-job");
    new MutationObserver(() => {
        const bar = box.querySelector(".upload-progress");
        if (!bar) return;
        const text = box.querySelector(".upload-card .progress-text").textContent;
        window.uploadProgress.push({ value: bar.value, max: bar.max, text });
    }).observe(box, { childList: true, subtree: true });
}"""
