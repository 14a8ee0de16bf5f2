"""Where a benchmark's results go: the raw figures as JSON and the report as markdown, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, results: dict[str, Any], report: str, *, indent: int = 1) -> None:
    """``OUT.json`` (every figure) and ``OUT.md`` (``report``), folders made as needed; the report is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=indent) + "\n")
    out.with_suffix(".md").write_text(report)
    print(report)
