"""Jobs in a real browser: an archive ingested with a progress bar, a tiny training job followed live, the new
version activated from the model table, its plots; a queued job cancelled; a refused training request."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

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
    page.fill("#train-source", "mnist")
    page.fill("#train-target", "usps")
    page.select_option("#train-bits", "16")
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
    new_version = jobs_server.client().get(f"/v1/jobs/{job_id}").json()["result"]["version"]
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

    # The training run's plots: shown when the model's folder holds them, otherwise a clear note.
    row.get_by_role("button", name="Plots").click()
    figures = page.locator("#plots figure.plot")
    expect(figures).to_have_count(2)
    folder = jobs_server.settings.models_dir / new_version
    for name in ("loss_curves.png", "pr_curve.png"):
        figure = page.locator(f"#plots figure[data-plot='{name}']")
        if (folder / name).is_file():
            expect(figure).to_have_class(re.compile(r"\bloaded\b"))
        else:
            expect(figure.locator(".missing")).to_contain_text("stored for this version")
    screenshot(page, "models-and-jobs")


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
