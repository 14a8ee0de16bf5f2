"""The library page in a real browser: browse with filters and pages, upload images, delete, refused writes."""

from __future__ import annotations

import re

from playwright.sync_api import Dialog, Page, expect

from tests.conftest import DigitFolders
from tests.ui.conftest import API_KEY, LiveServer, mnist_pngs, open_ui, screenshot, upload


def apply_filter(page: Page, *, domain: str = "", label: str = "", per_page: str = "48") -> None:
    page.fill("#filter-domain", domain)
    page.fill("#filter-label", label)
    page.select_option("#filter-limit", per_page)
    page.click("#library-filter button[type=submit]")


def test_browse_filter_and_page(page: Page, library_server: LiveServer) -> None:
    open_ui(page, library_server, "library")
    cards = page.locator("#library-grid figure")
    expect(cards).to_have_count(48)
    page.click("#library-more")
    expect(cards).to_have_count(60)
    expect(page.locator("#library-more")).to_be_hidden()

    apply_filter(page, domain="mnist")
    expect(cards).to_have_count(20)
    expect(page.locator("#library-grid .domain")).to_have_text(["mnist"] * 20)

    expected = library_server.client().get("/v1/images", params={"domain": "usps", "label": "3"}).json()["items"]
    apply_filter(page, domain="usps", label="3")
    expect(cards).to_have_count(len(expected))
    assert [int(cards.nth(i).get_attribute("data-id") or 0) for i in range(len(expected))] == [
        item["id"] for item in expected
    ]
    expect(page.locator("#library-grid .label")).to_have_text(["label 3"] * len(expected))
    screenshot(page, "library-filtered")

    apply_filter(page, per_page="24")
    expect(cards).to_have_count(24)
    page.click("#library-more")
    expect(cards).to_have_count(48)
    page.click("#library-more")
    expect(cards).to_have_count(60)

    apply_filter(page, label="no-such-label")
    expect(cards).to_have_count(0)
    expect(page.locator("#library-empty")).to_be_visible()


def test_upload_images_then_delete_one(page: Page, library_server: LiveServer, digits: DigitFolders) -> None:
    open_ui(page, library_server, "library")
    expect(page.locator("#server-status")).to_contain_text("60 images")
    new = mnist_pngs(digits, 30)[29][0]  # not among the 20 stored MNIST digits
    page.set_input_files(
        "#upload-files",
        [upload(new, "new.png"), upload(new, "again.png"), upload(b"not an image", "notes.txt", "text/plain")],
    )
    page.fill("#upload-domain", "phone")
    page.fill("#upload-label", "7")
    page.click("#upload-form button[type=submit]")
    result = page.locator("#upload-result")
    expect(result).to_contain_text("1 added, 1 already stored, 1 refused.")
    expect(result.locator(".refused")).to_have_text(re.compile(r"^notes\.txt: not an image in an accepted format"))
    expect(page.locator("#server-status")).to_contain_text("61 images")

    apply_filter(page, domain="phone")
    cards = page.locator("#library-grid figure")
    expect(cards).to_have_count(1)
    expect(cards.locator(".label")).to_have_text("label 7")
    image_id = cards.first.get_attribute("data-id")

    def answer(accept: bool) -> None:
        def handle(dialog: Dialog) -> None:
            assert f"Delete image #{image_id}?" in dialog.message
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", handle)

    answer(accept=False)
    cards.first.get_by_role("button", name="Delete").click()
    expect(cards).to_have_count(1)

    answer(accept=True)
    cards.first.get_by_role("button", name="Delete").click()
    expect(cards).to_have_count(0)
    expect(page.locator("#library-notice")).to_have_text(f"Deleted image #{image_id}.")
    expect(page.locator("#server-status")).to_contain_text("60 images")
    assert library_server.client().get(f"/v1/images/{image_id}").status_code == 404


def test_writes_without_a_valid_key_show_the_api_message(page: Page, library_server: LiveServer) -> None:
    open_ui(page, library_server, "library", api_key=None)
    error = page.locator("#library-error")
    first = page.locator("#library-grid figure").first
    page.on("dialog", lambda dialog: dialog.accept())

    first.get_by_role("button", name="Delete").click()
    expect(error).to_have_text("this request needs the X-API-Key header. Enter the API key at the top right.")

    page.fill("#api-key", "wrong-key")
    page.click("#key-form button")
    first.get_by_role("button", name="Delete").click()
    expect(error).to_contain_text("the X-API-Key is not valid")

    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    image_id = first.get_attribute("data-id")
    first.get_by_role("button", name="Delete").click()
    expect(page.locator("#library-notice")).to_have_text(f"Deleted image #{image_id}.")
    expect(error).to_be_hidden()
    # the key is kept in localStorage across reloads
    page.reload()
    expect(page.locator("#api-key")).to_have_value(API_KEY)
