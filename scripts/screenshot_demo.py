"""The README's pictures of the UI: search a running demo and save the page.

* photos demo (``make run``): a PACS sketch of a giraffe (``--query``), searched among the library's photos and
  cartoons;
* digits demo (``make run DEMO=digits``): an MNIST test digit, a domain the demo library does not hold (it holds
  USPS scans and MNIST-M colour digits).

    .venv/bin/python -m scripts.screenshot_demo --query data/pacs/sketch/giraffe/7401.png \
        --out docs/ui-search-photos.png
    .venv/bin/python -m scripts.screenshot_demo --out docs/ui-search.png      # the digits demo

Needs Debian's Chromium (``/usr/bin/chromium``) and the playwright package (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import FilePayload, expect, sync_playwright

from workbench.chromium import CHROMIUM_ARGS
from workbench.datasets import load_digits

CHROMIUM = "/usr/bin/chromium"


def mnist_query(index: int) -> bytes:
    """One MNIST test digit as PNG, enlarged so the query thumbnail is readable."""
    digits = load_digits("mnist")
    image = Image.fromarray(digits.images[index].squeeze()).resize((112, 112), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/ui-search.png"))
    parser.add_argument("--query", type=Path, default=None, help="an image file to search with")
    parser.add_argument("--index", type=int, default=7, help="without --query: which MNIST test digit")
    parser.add_argument("--k", type=int, default=18)
    parser.add_argument("--domain", default="", help="search only this domain ('' for all)")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(args.url)
        page.fill("#opt-k", str(args.k))
        page.fill("#opt-domain", args.domain)
        if args.query is not None:
            query = FilePayload(name=args.query.name, mimeType="image/png", buffer=args.query.read_bytes())
        else:
            query = FilePayload(name="mnist.png", mimeType="image/png", buffer=mnist_query(args.index))
        page.set_input_files("#search-file", files=query)
        expect(page.locator("#hits .hit")).to_have_count(args.k)
        for thumbnail in page.locator("#hits img").all():
            expect(thumbnail).to_have_js_property("complete", True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
