"""How long does ``make run`` take from nothing? Runs what ``make run`` calls (``scripts.run_demo``) with a fresh,
empty data folder — no demo model, no feature cache, no database, no library — prefixes every line it prints
with the seconds since start, and stops the server once the demo says it is serving. The log it writes is the
raw output behind the README's demo timings.

    .venv/bin/python -m scripts.time_demo --demo photos --out benchmarks/demo/make-run-photos.log

Run it on an idle machine: the model's training and the backbone's features take both cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from workbench.machine import machine

SERVING = "metah is serving on"


def header(demo: str, command: list[str]) -> str:
    info = machine()
    return (
        f"# make run ({demo} demo) from an empty data folder; commit {info['commit']}; {info['cpu']}, "
        f"{info['cores']} cores; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average at start: "
        f"{' '.join(map(str, info['load_average_at_start']))}; command: {' '.join(command)} (what make run calls); "
        "each line: seconds since start\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", choices=("photos", "digits"), default="photos")
    parser.add_argument("--out", type=Path, required=True, help="the timestamped log")
    parser.add_argument("--port", type=int, default=8765, help="where the demo serves while it is timed")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = parser.parse_args()
    command = [sys.executable, "-m", "scripts.run_demo", "--demo", args.demo]
    Path("var").mkdir(exist_ok=True)  # a fresh checkout has none until make run
    data_dir = Path(tempfile.mkdtemp(prefix=f"time-demo-{args.demo}-", dir="var"))
    env = {**os.environ, "METAH_DATA_DIR": str(data_dir), "METAH_PORT": str(args.port), "PYTHONUNBUFFERED": "1"}
    env.pop("METAH_API_KEY", None)
    lines = [header(args.demo, ["python", "-m", "scripts.run_demo", "--demo", args.demo])]
    start = time.monotonic()
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = False
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            elapsed = time.monotonic() - start
            lines.append(f"{elapsed:.0f}s {line.rstrip()}\n")
            if SERVING in line:
                served = True
                break
            if elapsed > args.timeout:
                break
    finally:
        demo.send_signal(signal.SIGTERM)  # run_demo stops its server on SIGTERM
        demo.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(lines))
    print(f"{'served' if served else 'NOT served'} after {time.monotonic() - start:.0f} s; log: {args.out}")
    if not served:
        sys.exit(1)


if __name__ == "__main__":
    main()
