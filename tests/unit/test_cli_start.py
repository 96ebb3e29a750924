"""`twinserve --help` and `twinserve report --help` start without importing torch (or any verb's module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys, service.cli
try:
    service.cli.main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "ray", "numpy", "service.pruning.job", "service.reliability", "service.loadgen",
                           "service.cost.report") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["reliability", "--help"], ["capacity", "--help"]])
def test_help_imports_no_verb_module(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("HEAVY"))
    assert line.strip() == "HEAVY", f"twinserve {' '.join(argv)} imported {line.removeprefix('HEAVY ')}"


def test_a_verb_error_is_one_line_without_importing_torch(tmp_path):
    code = ("import sys, service.cli\n"
            f"rc = service.cli.main(['report', '--prices', {str(tmp_path / 'absent.yaml')!r}, "
            f"'--out-dir', {str(tmp_path)!r}])\n"
            "print('RC', rc, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "RC 2 False" in done.stdout, done.stdout + done.stderr


def test_the_parser_choices_name_what_the_verbs_know():
    from service import cli
    from service.cli import capacity
    from service.loadgen import SHAPES
    from service.reliability import SCENARIOS

    assert cli.RELIABILITY_SCENARIOS == SCENARIOS
    assert set(cli.REQUEST_SHAPES) == set(SHAPES)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb in ("capacity", "peers"):
        shapes = next(a for a in sub.choices[verb]._actions if a.dest == "shapes")
        assert set(shapes.choices) == set(SHAPES), verb
    assert capacity in cli.VERB_GROUPS  # the capacity verbs are registered by their own module
