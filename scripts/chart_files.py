#!/usr/bin/env python3
"""Copy the files the Helm chart ships from their one source into helm/twinserve/files/ (`make chart-files`).

Helm reads only files inside the chart (`.Files.Get`), and `helm package` does not follow a symlink out of it,
so the chart keeps copies. The sources are the ones named in COPIES; edit those, then run `make chart-files`.
`--check` exits 1 naming every copy that differs (tests/unit/test_chart_files.py runs the same check).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "helm" / "twinserve" / "files"

# copy in the chart <- its one source
COPIES: dict[Path, Path] = {
    FILES / "dashboard.json": ROOT / "deploy" / "grafana" / "twinserve-dashboard.json",
    FILES / "prices.yaml": ROOT / "deploy" / "prices.yaml",
}


def drifted() -> list[str]:
    """Every chart copy that is missing or differs from its source, as 'copy (from source)'."""
    return [f"{copy.relative_to(ROOT)} (from {source.relative_to(ROOT)})" for copy, source in COPIES.items()
            if not copy.is_file() or copy.read_bytes() != source.read_bytes()]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = drifted()
        if stale:
            print("chart files differ from their sources; run `make chart-files`: " + ", ".join(stale),
                  file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: {Path(__file__).name} [--check]", file=sys.stderr)
        return 2
    for copy, source in COPIES.items():
        shutil.copyfile(source, copy)
        print(f"{copy.relative_to(ROOT)} <- {source.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
