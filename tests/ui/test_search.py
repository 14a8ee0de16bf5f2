"""The search page in a real browser: upload, drop and sketch a query (pen width, undo, clear); its code; hits;
"more like this"; the newest of two searches wins; rejected files answered with the API's own message."""

from __future__ import annotations

import base64
import contextlib
import re
import time

import httpx
from playwright.sync_api import Error, Page, Route, expect

from tests.ui.conftest import LiveServer, PNGs, open_ui, screenshot, upload


def api_message(live: LiveServer, data: bytes, name: str, **params: int) -> str:
    """The error message the API itself gives for searching with these bytes."""
    response = live.client().post("/v1/search", files={"image": (name, data)}, params=params)
    assert response.status_code >= 400, response.text
    return str(response.json()["error"]["message"])


def test_upload_shows_the_code_and_the_hits_then_more_like_this(
    page: Page, library_server: LiveServer, digit_pngs: PNGs
) -> None:
    open_ui(page, library_server)
    expect(page.locator("#server-status")).to_contain_text("16 bits · 60 images")
    page.fill("#opt-k", "12")
    page.fill("#opt-domain", "usps")
    page.set_input_files("#search-file", upload(digit_pngs[3][0]))

    hits = page.locator("#hits .hit")
    expect(hits).to_have_count(12)
    expect(hits.first.locator(".distance")).to_have_text("d = 0")
    # the stored copy of the query is among the hits at distance 0 (ties are ordered by id: it need not be first)
    client = library_server.client(api_key=None)
    tied = [hit for hit in hits.all() if hit.locator(".distance").inner_text() == "d = 0"]
    sources = [str(hit.locator("img").get_attribute("src")) for hit in tied]
    copies = [hit for hit, src in zip(tied, sources, strict=True) if client.get(src).content == digit_pngs[3][0]]
    assert len(copies) == 1, f"{len(tied)} hit(s) at d = 0, {len(copies)} of them the query's bytes"
    expect(copies[0].locator(".label")).to_have_text(f"label {digit_pngs[3][1]}")
    expect(page.locator("#hits .hit .domain")).to_have_text(["usps"] * 12)
    expect(page.locator("#query-bits")).to_have_text(_bits_pattern(16))
    expect(page.locator("#query-hex")).to_have_text(_hex_pattern(16))
    expect(page.locator("#query-meta")).to_contain_text("16 bits · 12 hits")
    for thumbnail in page.locator("#hits img").all():  # every thumbnail loaded (content_url works)
        expect(thumbnail).to_have_js_property("complete", True)
        assert thumbnail.evaluate("image => image.naturalWidth") > 0
    screenshot(page, "search")  # the README's picture comes from the real demo: scripts/screenshot_demo.py

    distances = [int(text.removeprefix("d = ")) for text in page.locator("#hits .distance").all_inner_texts()]
    assert distances == sorted(distances)

    chosen = hits.nth(4)
    chosen_id = chosen.get_attribute("data-id")
    chosen.get_by_role("button", name="More like this").click()
    expect(page.locator("#query-title")).to_have_text(f"More like image #{chosen_id}")
    expect(hits).to_have_count(12)
    assert chosen_id not in [hits.nth(i).get_attribute("data-id") for i in range(12)]
    expect(page.locator("#query-bits")).to_have_text(_bits_pattern(16))


def test_a_dropped_file_is_searched(page: Page, library_server: LiveServer, digit_pngs: PNGs) -> None:
    open_ui(page, library_server, api_key=None)  # searching needs no key
    page.fill("#opt-k", "5")
    page.fill("#opt-radius", "0")
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        base64.b64encode(digit_pngs[0][0]).decode(),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#query-title")).to_have_text("Uploaded dropped.png")
    hits = page.locator("#hits .hit")
    expect(hits.first).to_be_visible()
    assert 1 <= hits.count() <= 5
    expect(page.locator("#hits .distance")).to_have_text(["d = 0"] * hits.count())  # Hamming radius 0


def test_a_drawn_digit_is_searched(page: Page, library_server: LiveServer) -> None:
    open_ui(page, library_server, api_key=None)
    page.click("#draw-search")
    expect(page.locator("#search-error")).to_have_text("Draw something on the canvas first.")

    for ink in ("white", "black"):
        page.select_option("#draw-ink", ink)
        _draw_a_seven(page)
        page.click("#draw-search")
        expect(page.locator("#query-title")).to_have_text("Drawing")
        expect(page.locator("#search-error")).to_be_hidden()
        expect(page.locator("#hits .hit")).to_have_count(12)
        expect(page.locator("#query-preview")).to_have_attribute("src", _starts_with("data:image/png"))
        screenshot(page, f"draw-{ink}")
    assert page.evaluate(_CORNER_PIXEL) == [255, 255, 255]  # black-on-white: the background is white


def test_the_sketch_pad_has_a_pen_width_undo_and_clear(page: Page, library_server: LiveServer) -> None:
    open_ui(page, library_server, api_key=None)
    expect(page.locator("#draw-ink")).to_have_value("black")  # black strokes on white paper by default
    expect(page.locator("#draw-undo")).to_be_disabled()
    assert not _inked(page, 0.5, 0.3)

    # A thin stroke, then a thick one: the width is the one chosen when the stroke started.
    page.fill("#draw-width", "4")
    expect(page.locator("#draw-width-value")).to_have_text("4 px")
    _line(page, 0.3)
    page.fill("#draw-width", "30")
    expect(page.locator("#draw-width-value")).to_have_text("30 px")
    _line(page, 0.7)
    assert _inked(page, 0.5, 0.3) and _inked(page, 0.5, 0.7)
    assert not _inked(page, 0.5, 0.3 + 10 / 280)  # 10 px off the 4 px line: paper
    assert _inked(page, 0.5, 0.7 + 10 / 280)  # 10 px off the 30 px line: still ink
    assert _close(_ink_rows(page, 0.5), (4, 30))  # the strokes are as wide as chosen

    # Undo takes back one stroke at a time, newest first.
    page.click("#draw-undo")
    assert _inked(page, 0.5, 0.3) and not _inked(page, 0.5, 0.7)
    page.click("#draw-undo")
    assert not _inked(page, 0.5, 0.3)
    expect(page.locator("#draw-undo")).to_be_disabled()
    page.click("#draw-search")
    expect(page.locator("#search-error")).to_have_text("Draw something on the canvas first.")

    # Clear takes back every stroke; the ink choice repaints the kept strokes instead of dropping them.
    _line(page, 0.3)
    _line(page, 0.7)
    page.select_option("#draw-ink", "white")
    assert _pixel(page, 0.5, 0.7) == [255, 255, 255] and _pixel(page, 0.05, 0.05) == [0, 0, 0]
    page.select_option("#draw-ink", "black")
    page.click("#draw-clear")
    assert not _inked(page, 0.5, 0.3) and not _inked(page, 0.5, 0.7)
    expect(page.locator("#draw-undo")).to_be_disabled()

    # What is searched is the sketch as shown.
    _line(page, 0.5)
    page.click("#draw-search")
    expect(page.locator("#query-title")).to_have_text("Drawing")
    expect(page.locator("#hits .hit")).to_have_count(12)
    expect(page.locator("#search-error")).to_be_hidden()
    assert page.locator("#query-preview").get_attribute("src") == page.evaluate(
        "() => document.getElementById('draw-canvas').toDataURL('image/png')"
    )
    screenshot(page, "sketch-pad")


def test_the_newest_search_wins(page: Page, library_server: LiveServer, digit_pngs: PNGs) -> None:
    first, second = digit_pngs[3][0], digit_pngs[8][0]
    client = library_server.client()
    expected = [hit["id"] for hit in search_hits(client, second)]
    assert expected != [hit["id"] for hit in search_hits(client, first)]  # the two answers can be told apart

    # The first search is held on its way to the server; the second one goes through.
    held: list[Route] = []

    def hold_the_first(route: Route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route(re.compile(r"/v1/search\?"), hold_the_first)
    open_ui(page, library_server, api_key=None)
    page.set_input_files("#search-file", upload(first, "first.png"))
    deadline = time.monotonic() + 15
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the first search was never sent"
    page.set_input_files("#search-file", upload(second, "second.png"))

    expect(page.locator("#query-title")).to_have_text("Uploaded second.png")
    hits = page.locator("#hits .hit")
    expect(hits).to_have_count(len(expected))
    assert [int(hits.nth(i).get_attribute("data-id") or 0) for i in range(len(expected))] == expected
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bbusy\b"))

    # The page aborted the first request (AbortController); letting it through now changes nothing.
    assert held[0].request.failure == "net::ERR_ABORTED"
    with contextlib.suppress(Error):  # the request is gone
        held[0].continue_()
    page.wait_for_timeout(500)
    expect(page.locator("#query-title")).to_have_text("Uploaded second.png")
    assert [int(hits.nth(i).get_attribute("data-id") or 0) for i in range(len(expected))] == expected
    expect(page.locator("#search-error")).to_be_hidden()


def test_rejected_files_show_the_api_message(page: Page, library_server: LiveServer, digit_pngs: PNGs) -> None:
    open_ui(page, library_server)
    error = page.locator("#search-error")

    text = b"just some notes, not an image"
    page.set_input_files("#search-file", upload(text, "notes.txt", "text/plain"))
    expect(error).to_have_text(api_message(library_server, text, "notes.txt"))
    expect(error).to_contain_text("not an image in an accepted format")

    big = digit_pngs[0][0] + bytes(300 * 1024)  # over the test server's 256 KiB upload limit
    page.set_input_files("#search-file", upload(big, "big.png"))
    expect(error).to_have_text(api_message(library_server, big, "big.png"))

    page.fill("#opt-k", "0")
    page.set_input_files("#search-file", upload(digit_pngs[0][0]))
    expect(error).to_have_text(api_message(library_server, digit_pngs[0][0], "q.png", k=0))
    expect(error).to_contain_text("k")

    page.fill("#opt-k", "3")
    page.set_input_files("#search-file", upload(digit_pngs[0][0]))
    expect(error).to_be_hidden()
    expect(page.locator("#hits .hit")).to_have_count(3)
    screenshot(page, "search-after-errors")


def test_the_ui_is_served_without_any_outside_request(page: Page, library_server: LiveServer) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_ui(page, library_server)
    for tab in ("library", "models", "search"):
        page.click(f"[data-tab={tab}]")
        expect(page.locator(f"[data-panel={tab}]")).to_be_visible()
    outside = [url for url in requested if not url.startswith((library_server.base_url, "data:", "blob:"))]
    assert outside == []
    assert httpx.get(f"{library_server.base_url}/").headers["content-security-policy"]


def search_hits(client: httpx.Client, data: bytes) -> list[dict[str, object]]:
    """The hits the API gives for the page's default options (k = 12, any domain)."""
    response = client.post("/v1/search", files={"image": ("q.png", data)}, params={"k": 12})
    assert response.status_code == 200, response.text
    hits: list[dict[str, object]] = response.json()["hits"]
    return hits


_CORNER_PIXEL = """() => [
    ...document.getElementById("draw-canvas").getContext("2d").getImageData(2, 2, 1, 1).data
].slice(0, 3)"""


def _draw_a_seven(page: Page) -> None:
    box = page.locator("#draw-canvas").bounding_box()
    assert box is not None
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.click("#draw-clear")
    page.mouse.move(x + 0.25 * w, y + 0.2 * h)
    page.mouse.down()
    page.mouse.move(x + 0.75 * w, y + 0.2 * h, steps=8)
    page.mouse.move(x + 0.45 * w, y + 0.85 * h, steps=10)
    page.mouse.up()


def _line(page: Page, height: float) -> None:
    """A horizontal stroke across the middle of the canvas at ``height`` (a fraction of its height)."""
    box = page.locator("#draw-canvas").bounding_box()
    assert box is not None
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.2 * w, y + height * h)
    page.mouse.down()
    page.mouse.move(x + 0.8 * w, y + height * h, steps=12)
    page.mouse.up()


def _pixel(page: Page, fx: float, fy: float) -> list[int]:
    """The RGB of the canvas pixel at these fractions of its width and height."""
    return list(
        page.evaluate(
            """([fx, fy]) => {
                const canvas = document.getElementById("draw-canvas");
                const x = Math.round(fx * canvas.width), y = Math.round(fy * canvas.height);
                return [...canvas.getContext("2d").getImageData(x, y, 1, 1).data].slice(0, 3);
            }""",
            [fx, fy],
        )
    )


def _inked(page: Page, fx: float, fy: float) -> bool:
    """Black ink (not white paper) at that point of a black-on-white sketch."""
    return max(_pixel(page, fx, fy)) < 128


def _ink_rows(page: Page, fx: float) -> tuple[int, ...]:
    """The heights, in canvas pixels, of the inked runs down the column at ``fx``: the strokes' widths."""
    runs = page.evaluate(
        """(fx) => {
            const canvas = document.getElementById("draw-canvas");
            const x = Math.round(fx * canvas.width);
            const data = canvas.getContext("2d").getImageData(x, 0, 1, canvas.height).data;
            const runs = [];
            let run = 0;
            for (let y = 0; y < canvas.height; y++) {
                if (data[4 * y] < 128) run++;
                else if (run) { runs.push(run); run = 0; }
            }
            if (run) runs.push(run);
            return runs;
        }""",
        fx,
    )
    return tuple(int(run) for run in runs)


def _close(runs: tuple[int, ...], widths: tuple[int, ...], tolerance: int = 1) -> bool:
    return len(runs) == len(widths) and all(abs(r - w) <= tolerance for r, w in zip(runs, widths, strict=True))


def _bits_pattern(bits: int) -> re.Pattern[str]:
    """The code as the page shows it: groups of 8 bits separated by spaces."""
    return re.compile(rf"^[01]{{8}}( [01]{{8}}){{{bits // 8 - 1}}}$")


def _hex_pattern(bits: int) -> re.Pattern[str]:
    return re.compile(rf"^[0-9a-f]{{{bits // 4}}}$")


def _starts_with(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix))
