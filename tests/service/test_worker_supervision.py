"""``metah serve`` and its worker processes (issue 13): a worker that dies is started again and jobs keep
running; ingestion has its own lane, so an archive is ingested while a model trains."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from service.cli import build_parser
from service.jobs.process import WorkerProcesses, handlers
from tests.conftest import DigitFolders
from tests.service.conftest import API_KEY, free_port, make_settings, metah_environment, running_metah_serve
from tests.service.test_api_jobs import image_folder, submitted, wait_job, zip_of
from workbench.processes import children_of


def live_children(pid: int) -> list[int]:
    """``pid``'s children, less the dead ones nobody has reaped yet."""
    alive = []
    for child in children_of(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(child)
    return alive


def wait_children(pid: int, count: int, *, not_among: tuple[int, ...] = (), timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        children = live_children(pid)
        if len(children) == count and not set(children) & set(not_among):
            return children
        assert time.monotonic() < deadline, (children, not_among)
        time.sleep(0.1)


def test_serve_restarts_a_worker_killed_with_kill_9(
    tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]
) -> None:
    port = free_port()
    env = metah_environment(
        DATA_DIR=str(tmp_path / "var"),
        MODEL=str(api_artefact),
        PORT=str(port),
        API_KEY=API_KEY,
        WORKER_POLL_S="0.1",
        INGEST_WORKERS="0",
    )
    with running_metah_serve(env, port) as run:
        [first] = wait_children(run.process.pid, 1)
        os.kill(first, signal.SIGKILL)
        [second] = wait_children(run.process.pid, 1, not_among=(first,))
        job = wait_job(run.client, submitted(run.client, zip_of(image_folder(digit_pngs, 10))))
        assert job["status"] == "succeeded" and job["result"]["created"] == 10, job
        assert live_children(run.process.pid) == [second]
    assert f"job worker {first} exited with status -9" in run.output and "restarting it in 1 s" in run.output
    assert f"job worker started (pid {second}" in run.output


def test_an_archive_is_ingested_while_a_model_trains(
    tmp_path: Path, api_artefact: Path, digits: DigitFolders, digit_pngs: list[tuple[bytes, str]]
) -> None:
    """A training job far longer than the test holds the worker for any kind; the ingest lane's worker
    ingests an archive meanwhile (before: the archive waited for the training to end)."""
    mnist = zip_of([(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))])
    usps = zip_of([(f"{label}/{i}.png", data) for i, (data, label) in enumerate(digit_pngs[:50])])
    port = free_port()
    env = metah_environment(
        DATA_DIR=str(tmp_path / "var"), MODEL=str(api_artefact), PORT=str(port), API_KEY=API_KEY, WORKER_POLL_S="0.1"
    )
    with running_metah_serve(env, port) as run:
        for archive, domain in ((mnist, "mnist"), (usps, "usps")):
            assert wait_job(run.client, submitted(run.client, archive, domain=domain))["status"] == "succeeded"
        body = {"source_domain": "mnist", "target_domain": "usps", "bits": 32, "iterations": 1_000_000}
        train_id = run.client.post("/v1/training-jobs", json=body).json()["job_id"]
        wait_job(run.client, train_id, until=lambda job: job["status"] != "queued")
        ingest = wait_job(run.client, submitted(run.client, zip_of(image_folder(digit_pngs, 8)), domain="more"))
        training = run.client.get(f"/v1/jobs/{train_id}").json()
        assert ingest["status"] == "succeeded" and ingest["result"]["created"] == 8, ingest
        assert training["status"] == "running", training
        assert len(live_children(run.process.pid)) == 2  # one worker for any kind, one for ingestion
        run.client.post(f"/v1/jobs/{train_id}/cancel")


def test_serve_starts_an_ingest_lane_next_to_its_workers(tmp_path: Path) -> None:
    lanes = WorkerProcesses(make_settings(tmp_path, workers=2, ingest_workers=1), 2).children
    assert [child.kinds for child in lanes] == [None, None, ("ingest",)]
    assert WorkerProcesses(make_settings(tmp_path, workers=0, ingest_workers=1), 0).children == []


def test_metah_worker_kinds_are_the_job_kinds() -> None:
    parser = build_parser()
    worker = parser._subparsers._group_actions[0].choices["worker"]  # type: ignore[union-attr]
    [kind] = [action for action in worker._actions if action.dest == "kind"]
    assert set(kind.choices or ()) == set(handlers())
    assert parser.parse_args(["worker", "--kind", "ingest", "--kind", "train"]).kind == ["ingest", "train"]
    assert parser.parse_args(["worker"]).kind is None
