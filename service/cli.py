"""``metah`` command line (CONTRACT §2). Parses arguments, calls one function, prints the outcome.

User mistakes (``model.errors.MetahError``) end with a one-line message and exit status 2, a blob store that
cannot be used (``service.storage.BlobStoreError``: S3 unreachable, access refused, no bucket) with one and exit
status 1; they never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import CheckpointError, ConfigError, DataError, MetahError
from service.logs import configure as configure_logs
from service.storage import BlobStoreError

if TYPE_CHECKING:
    from service.settings import Settings

EXIT_USAGE = 2
EXIT_STORAGE = 1


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train an encoder on a labelled source and an unlabelled target folder")
    p.add_argument("--source", type=Path, required=True, help="labelled source images, one sub-folder per class")
    p.add_argument("--target", type=Path, required=True, help="unlabelled target images, any layout")
    p.add_argument("--out", type=Path, required=True, help="run folder (model.pt, checkpoint.pt, metrics ...)")
    p.add_argument("--method", choices=["metah", "tah", "source_only"], default=None)
    p.add_argument("--bits", type=int, default=None, help="code length, 16-128, a multiple of 8 (default 64)")
    p.add_argument(
        "--backbone",
        default=None,
        help="auto (default: lenet for small digit-like images, efficientnet_lite0 otherwise), lenet, "
        "efficientnet_lite0, efficientnet_lite0_blocks, efficientnet_lite2, resnet18, resnet50",
    )
    p.add_argument("--backbone-weights", default=None, help="local ImageNet weights file (needed for resnet18/50)")
    p.add_argument(
        "--mode",
        choices=["auto", "frozen", "finetune"],
        default=None,
        help="auto (default: frozen features for a pretrained backbone on CPU, finetune on a GPU)",
    )
    # the help mirrors model.config.MODE_SCHEDULES without importing it (torch): the CLI starts without it
    p.add_argument("--iterations", type=int, default=None, help="steps (default: 3600 frozen, 1200 finetune)")
    p.add_argument("--batch-size", type=int, default=None, help="images per domain per step (default 64)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--config", type=Path, default=None, help="JSON or TOML file with training settings")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--eval-query", type=Path, default=None, help="labelled target queries (ImageFolder)")
    p.add_argument("--eval-database", type=Path, default=None, help="labelled target database (ImageFolder)")


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="score an encoder artefact on labelled query and database folders")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--query", type=Path, required=True)
    p.add_argument("--database", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    p.add_argument("--plot", type=Path, default=None, help="P-R curve PNG (default: next to --json, or ./pr_curve.png)")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint into the encoder artefact")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "serve",
        help="the HTTP API on METAH_HOST:METAH_PORT (applies the migrations itself on SQLite)",
        description="Settings come from the environment: METAH_DATA_DIR, METAH_DATABASE_URL, METAH_BLOB_URL, "
        "METAH_API_KEY, METAH_MODEL, METAH_HOST, METAH_PORT.",
    )


def _add_migrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "migrate",
        help="apply the database migrations (METAH_DATABASE_URL, or SQLite in METAH_DATA_DIR) and create the "
        "METAH_BLOB_URL bucket when it is missing",
    )


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="a job worker (ingestion, training, activation) sharing the database and data dir of the API",
        description="Settings come from the environment (METAH_DATA_DIR, METAH_DATABASE_URL, ...). "
        "Stops on SIGTERM/SIGINT; its running job goes back to the queue.",
    )
    p.add_argument(
        "--kind",
        action="append",
        choices=["ingest", "train", "activate"],
        help="run only jobs of this kind (repeatable; default: every kind), e.g. a lane for ingestion",
    )


def _add_sweep_blobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sweep-blobs",
        help="remove the image blobs no row references (deleted longer than METAH_BLOB_GRACE_S ago); the "
        "workers do it every METAH_BLOB_SWEEP_S",
    )
    p.add_argument(
        "--strays",
        action="store_true",
        help="first list the whole store and mark the blobs no row references that nothing marked (left behind "
        "by a failed delete before migration 0004), for this sweep or the first one after the grace period",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metah", description="Cross-domain image retrieval with MeTAH hashing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_migrate(sub)
    _add_worker(sub)
    _add_sweep_blobs(sub)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from model.config import TrainConfig, load_config_file
    from model.train import EvalSets, train

    base = load_config_file(args.config) if args.config else TrainConfig()
    config = base.override(
        method=args.method,
        bits=args.bits,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        mode=args.mode,
        iterations=args.iterations,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
    )
    result = train(
        config,
        args.source,
        args.target,
        args.out,
        resume=args.resume,
        eval_sets=EvalSets(args.eval_query, args.eval_database),
    )
    if result.metrics:
        for line in result.metrics["choices"]:
            print(line)
        _print_evaluations(result.metrics["evaluation"])
        print(f"model {result.model_version} written to {result.paths.model}")
    return 0


def _print_evaluations(evaluations: dict[str, dict[str, object]]) -> None:
    for name, values in evaluations.items():
        precision_at_k = values.get("precision_at_k", {})
        at_k = " ".join(f"P@{k}={v:.4f}" for k, v in precision_at_k.items()) if isinstance(precision_at_k, dict) else ""
        print(
            f"{name:>18}: MAP@all={values['map_all']:.4f}  MAP@r2={values['map_radius2']:.4f}  "
            f"P@r2={values['precision_radius2']:.4f}  {at_k}"
        )


def run_evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_artefact

    plot = args.plot or (args.json.with_name(f"{args.json.stem}_pr.png") if args.json else Path("pr_curve.png"))
    evaluation = evaluate_artefact(args.model, args.query, args.database, plot)
    summary = evaluation.metrics.to_dict()
    _print_evaluations({"query_vs_database": summary})
    for line in evaluation.skipped:
        print(f"skipped {line}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"model_version": evaluation.model_version, "skipped": list(evaluation.skipped), **summary}
        args.json.write_text(json.dumps(report, indent=2))
    print(f"P-R curve written to {plot}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from model.factory import export_checkpoint

    metadata = export_checkpoint(args.checkpoint, args.out)
    print(f"model {metadata['model_version']} ({metadata['bits']} bits) written to {args.out}")
    return 0


def _service_settings() -> Settings:
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            " ".join(
                [
                    *(f"METAH_{str(part).upper()}:" for part in error["loc"]),
                    str(error["msg"]).removeprefix("Value error, "),
                ]
            )
            for error in exc.errors()
        )
        raise ConfigError(f"invalid METAH_* settings: {problems}") from exc


def _migrate(url: str) -> str | None:
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # before alembic is imported

    from sqlalchemy.exc import SQLAlchemyError

    from service.migrate import current_revision, upgrade

    try:
        upgrade(url)
        return current_revision(url)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the database driver for {url.split(':', 1)[0]} is not installed ({exc})") from exc
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot migrate the database: {exc.__class__.__name__}: {exc}") from exc


def _create_bucket(settings: Settings) -> bool:
    """Create the ``METAH_BLOB_URL`` bucket when it is missing (the data dir needs nothing made in advance)."""
    if not settings.blob_url:
        return False
    from service.storage import open_blob_store

    return open_blob_store(settings).create_if_missing()


def run_migrate(args: argparse.Namespace) -> int:
    settings = _service_settings()
    print(f"database at revision {_migrate(settings.sqlalchemy_url)}")
    if settings.blob_url:
        made = _create_bucket(settings)
        print(f"blob store {settings.blob_url}: bucket {'created' if made else 'present'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    settings = _service_settings()  # before the heavy imports: a bad setting fails at once
    configure_logs(settings.log_format, logging.getLogger().level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # before alembic is imported

    import uvicorn

    from service.app import create_app

    if settings.is_sqlite:  # the one-machine setup prepares itself, as `metah migrate` would
        _migrate(settings.sqlalchemy_url)
        _create_bucket(settings)
    # log_config=None keeps the configuration above; RequestObserver writes the access lines (with request ids).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    settings = _service_settings()
    configure_logs(settings.log_format, logging.getLogger().level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # before alembic is imported

    from service.jobs.process import run_worker as work
    from service.migrate import current_revision, head_revision

    revision, head = current_revision(settings.sqlalchemy_url), head_revision()
    if revision != head:
        raise ConfigError(f"the database is at revision {revision}, this code needs {head}: run `metah migrate`")
    work(settings, args.kind)
    return 0


def run_sweep_blobs(args: argparse.Namespace) -> int:
    settings = _service_settings()
    from service.blobs import mark_strays, sweep
    from service.db import Database
    from service.storage import open_blob_store

    db, store = Database(settings.sqlalchemy_url), open_blob_store(settings)
    try:
        if args.strays:
            print(f"{mark_strays(db, store)} blobs no row references found and marked")
        print(f"{sweep(db, store, settings.blob_grace_s)} blobs removed")
    finally:
        db.close()
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "export": run_export,
    "serve": run_serve,
    "migrate": run_migrate,
    "worker": run_worker,
    "sweep-blobs": run_sweep_blobs,
}


# Commands that serve requests next to other work: spinning OpenMP waits stall FAISS and torch there when the
# other core is busy (docs/index.md). Training keeps the default: spinning waits suit a process that has the
# machine to itself.
PASSIVE_OPENMP_COMMANDS = frozenset({"serve", "worker"})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in PASSIVE_OPENMP_COMMANDS:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch or faiss is first imported
    configure_logs("text", logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU variant it probes
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, CheckpointError, MetahError) as exc:
        print(f"metah {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BlobStoreError as exc:
        print(f"metah {args.command}: error: blob store: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except KeyboardInterrupt:
        print(f"metah {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
