"""The library page in a real browser: browse with filters and pages, upload images, delete, refused writes,
"more like this" from a card, the stored domains offered in every domain field."""

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


def test_more_like_this_from_a_library_card_shows_the_hits_in_the_search_tab(
    page: Page, library_server: LiveServer
) -> None:
    open_ui(page, library_server, "library", api_key=None)  # a search: no key needed
    card = page.locator("#library-grid figure").nth(5)
    image_id = card.get_attribute("data-id")
    response = library_server.client().post(f"/v1/images/{image_id}/similar", params={"k": 12})
    expected = [hit["id"] for hit in response.json()["hits"]]

    card.get_by_role("button", name="More like this").click()
    expect(page).to_have_url(re.compile(r"#search$"))
    expect(page.locator("[data-panel=search]")).to_be_visible()
    expect(page.locator("[data-panel=library]")).to_be_hidden()
    expect(page.locator("#query-title")).to_have_text(f"More like image #{image_id}")
    expect(page.locator("#query-preview")).to_have_attribute("src", f"/v1/images/{image_id}/content")
    hits = page.locator("#hits .hit")
    expect(hits).to_have_count(len(expected))
    assert [int(hits.nth(i).get_attribute("data-id") or 0) for i in range(len(expected))] == expected
    screenshot(page, "library-more-like-this")


def domain_options(page: Page) -> list[tuple[str, str]]:
    """``(value, label)`` of the options of the ``#domains`` list that every domain field uses."""
    options = page.locator("#domains option")
    return [(str(o.get_attribute("value")), o.evaluate("option => option.label")) for o in options.all()]


def test_domain_fields_list_the_stored_domains_before_any_search(
    page: Page, library_server: LiveServer, digits: DigitFolders
) -> None:
    open_ui(page, library_server)  # the search tab: nothing searched, nothing browsed yet
    for field in ("#opt-domain", "#filter-domain", "#upload-domain", "#archive-domain", "#train-source"):
        expect(page.locator(field)).to_have_attribute("list", "domains")
    expect(page.locator("#domains option")).to_have_count(2)
    assert domain_options(page) == [("mnist", "mnist (20 images)"), ("usps", "usps (40 images)")]

    # The list follows this page's writes: a new domain appears with its count, an emptied one goes.
    page.click("[data-tab=library]")
    page.set_input_files("#upload-files", upload(mnist_pngs(digits, 30)[29][0], "new.png"))
    page.fill("#upload-domain", "phone")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-result")).to_contain_text("1 added")
    expect(page.locator("#domains option")).to_have_count(3)
    assert domain_options(page)[1] == ("phone", "phone (1 image)")

    apply_filter(page, domain="phone")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#library-grid figure").first.get_by_role("button", name="Delete").click()
    expect(page.locator("#library-notice")).to_contain_text("Deleted image")
    expect(page.locator("#domains option")).to_have_count(2)
    assert [value for value, _ in domain_options(page)] == ["mnist", "usps"]
