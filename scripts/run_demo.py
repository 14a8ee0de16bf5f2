"""``make run``: the demo model, a running ``metah serve`` and a cross-domain demo library, in one command.

1. trains the demo encoder once (``scripts/demo_model.py``; reused afterwards);
2. starts ``metah serve`` on ``METAH_HOST:METAH_PORT`` (default http://127.0.0.1:8000) with that model, its data
   in ``METAH_DATA_DIR`` (default ``var/demo-<demo>``, one folder per demo);
3. when the library is empty, uploads it through the HTTP API (the same ``POST /v1/images`` a user calls), with
   labels: the ``photos`` demo (default) stores the PACS photos and cartoons of ``data/pacs`` (search them by
   drawing a sketch); the ``digits`` demo USPS and MNIST-M digits from ``data/digits``;
4. prints the URL and keeps serving until Ctrl-C.

Running it again reuses the model, the database and the images, and is ready in seconds.

With ``--url URL`` it only does step 3, against a service that already runs there (docker-compose.yml's
``demo-library`` service): it waits until the service is ready, uploads the library when it holds no image yet,
and exits. ``METAH_API_KEY`` from the environment goes into ``X-API-Key`` in both modes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scripts.demo_model import DEMOS, ensure_demo_model
from workbench.datasets import PACS_DIR, load_digits, stratified_sample
from workbench.images import png_bytes

Upload = tuple[str, str, str, bytes]  # domain, label, file name, bytes
LIBRARY_DOMAINS = {"photos": ("photo", "cartoon"), "digits": ("usps", "mnist_m")}


def wait_ready(client: httpx.Client, server: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll ``/readyz`` until it answers 200; ``server``: the process we started (``None``: a remote one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"metah serve exited with status {server.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"metah at {client.base_url} was not ready after {timeout:.0f} s")


def digit_uploads(per_class: int) -> list[Upload]:
    uploads = []
    for name in LIBRARY_DOMAINS["digits"]:
        domain = load_digits(name)
        for index in stratified_sample(domain.labels, per_class, seed=0):
            uploads.append((name, str(int(domain.labels[index])), f"{name}.png", png_bytes(domain.images[index])))
    return uploads


def photo_uploads() -> list[Upload]:
    """Every PACS photo and cartoon of ``data/pacs``, as stored (JPEG), labelled by their class folder."""
    return [
        (domain, path.parent.name, path.name, path.read_bytes())
        for domain in LIBRARY_DOMAINS["photos"]
        for path in sorted((PACS_DIR / domain).glob("*/*"))
        if path.is_file()
    ]


def ingest_library(client: httpx.Client, uploads: list[Upload]) -> int:
    def upload(item: Upload) -> int:
        domain, label, name, data = item
        response = client.post("/v1/images", files={"image": (name, data)}, data={"domain": domain, "label": label})
        response.raise_for_status()
        return response.status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(status == 201 for status in pool.map(upload, uploads))


def ensure_library(client: httpx.Client, demo: str, per_class: int) -> None:
    """Upload the demo library when the service holds no image yet."""
    if client.get("/v1/images", params={"limit": 1}).json()["items"]:
        print("the demo library is already there")
        return
    print(f"uploading the {demo} demo library ({' and '.join(LIBRARY_DOMAINS[demo])}) ...")
    uploads = photo_uploads() if demo == "photos" else digit_uploads(per_class)
    print(f"{ingest_library(client, uploads)} images ingested")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", choices=DEMOS, default="photos")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: METAH_DATA_DIR/demo-model")
    parser.add_argument("--per-class", type=int, default=150, help="digits demo: images per digit and domain")
    parser.add_argument("--url", default=None, help="only upload the library to the metah already serving here")
    parser.add_argument("--wait", type=float, default=600, help="with --url: seconds to wait for /readyz")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training's choices and progress
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per uploaded image
    headers = {"X-API-Key": os.environ["METAH_API_KEY"]} if os.environ.get("METAH_API_KEY") else {}
    if args.url:
        with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
            wait_ready(client, None, timeout=args.wait)
            ensure_library(client, args.demo, args.per_class)
        return
    data_dir = Path(os.environ.get("METAH_DATA_DIR") or Path("var") / f"demo-{args.demo}")
    model = ensure_demo_model(args.model_dir or data_dir / "demo-model", args.demo)
    # A terminal, not a log collector: readable lines unless METAH_LOG_FORMAT says otherwise.
    env = {"METAH_LOG_FORMAT": "text", **os.environ, "METAH_MODEL": str(model.resolve())}
    env["METAH_DATA_DIR"] = str(data_dir)
    host, port = env.setdefault("METAH_HOST", "127.0.0.1"), env.setdefault("METAH_PORT", "8000")
    url = f"http://{host}:{port}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain `kill` also stops the server below
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            wait_ready(client, server, timeout=120)
            ensure_library(client, args.demo, args.per_class)
            print(f"\nmetah is serving on {url}  (API docs: {url}/docs; Ctrl-C stops it)\n", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
