"""Copy the seeded PACS subset committed under ``data/pacs/`` from the shared PACS folder.

Run once by a maintainer (it needs the ``shared/data/pacs`` folder); the product, the demo and the tests only read
the copy. Files are copied byte for byte (photo and cartoon JPEGs, single-channel sketch PNGs), keeping their
``<domain>/<class>/<file>`` layout, so every image can be traced back to the full data set by its path.

    .venv/bin/python scripts/prepare_pacs.py --shared ../shared/data/pacs --out data/pacs
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

# images per class copied from each domain: photos are the demo's labelled catalogue (source and database),
# sketches its unlabelled target domain, cartoons a second library domain
PER_CLASS = {"photo": 70, "sketch": 50, "cartoon": 40}
SEED = 2017  # the year of the PACS paper; any fixed seed would do


def copy_subset(shared: Path, out: Path, per_class: dict[str, int], seed: int) -> int:
    """Copy ``per_class[domain]`` seeded-random files of every class of every domain; returns the count."""
    rng = np.random.default_rng(seed)
    copied = 0
    for domain, count in per_class.items():
        for class_dir in sorted(p for p in (shared / domain).iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.iterdir() if p.is_file())
            picked = sorted(rng.choice(len(files), size=min(count, len(files)), replace=False))
            target = out / domain / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for index in picked:
                shutil.copyfile(files[index], target / files[index].name)
                copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--out", type=Path, default=Path("data/pacs"))
    args = parser.parse_args()
    print(f"copied {copy_subset(args.shared, args.out, PER_CLASS, SEED)} images to {args.out}")


if __name__ == "__main__":
    main()
