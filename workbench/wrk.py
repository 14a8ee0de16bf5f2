"""Searches over HTTP driven by ``wrk`` (Debian's ``wrk`` package), a load generator written in C.

The Python clients of the benchmarks spend more CPU per request than the service's own Python does (httpx about
1.5–2 ms, ``http.client`` a few hundred µs), on the same two cores as the server: their cost lowers every
searches/s figure and inflates every latency. ``wrk`` spends microseconds per request on one thread, so what it
measures is the server. Each request is one of the given queries, in turn, as the multipart body a browser sends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.loadtest import Upload, multipart_form

BOUNDARY = "metah-wrk-boundary"

# One Lua state per wrk thread: ``init`` reads the bodies, ``request`` cycles through them, ``done`` prints one
# JSON line (wrk's latencies are in microseconds).
SCRIPT = """
local bodies, next_body = {}, 0
local path, headers = nil, {["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"}
function init(args)
  path = args[1]
  for i = 3, #args do
    local file = assert(io.open(args[2] .. "/" .. args[i], "rb"))
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
end
function request()
  next_body = next_body %% #bodies + 1
  return wrk.format("POST", path, headers, bodies[next_body])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, ' ..
    '"timeouts": %%d, "status_errors": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def write_bodies(queries: Sequence[Upload], folder: Path) -> list[str]:
    """One file per query's multipart body in ``folder``; their names, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, query in enumerate(queries):
        (folder / f"{i}.body").write_bytes(multipart_form(query, BOUNDARY))
        names.append(f"{i}.body")
    (folder / "search.lua").write_text(SCRIPT % {"boundary": BOUNDARY})
    return names


def wrk_searches(
    base_url: str, path: str, folder: Path, names: Sequence[str], connections: int, seconds: float
) -> dict[str, Any]:
    """``connections`` keep-alive connections on one wrk thread for ``seconds`` (whole seconds, wrk's unit):
    searches/s and latencies (ms)."""
    executable = shutil.which("wrk")
    if executable is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    command = [
        executable, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
        "-s", str(folder / "search.lua"), base_url, "--", path, str(folder), *names,
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if finished.returncode != 0 or not finished.stdout.strip():
        output = f"{finished.stdout[-2000:]} {finished.stderr[-2000:]}".strip()
        raise RuntimeError(f"wrk exited with {finished.returncode}: {output}")
    line = finished.stdout.strip().splitlines()[-1]
    raw = json.loads(line)
    errors = sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts", "status_errors"))
    return {
        "connections": connections,
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "qps": raw["requests"] / (raw["duration_us"] / 1e6),
        "errors": errors,
        "median_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
    }
