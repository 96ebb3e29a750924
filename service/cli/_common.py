"""What every verb group shares: the one-line error, argument types, the choices the parser names."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["CliError", "REQUEST_SHAPES", "RELIABILITY_SCENARIOS", "non_negative_int", "one_line", "positive_int",
           "print_probe", "ratio", "weight"]


class CliError(Exception):
    """Shown to the user as one line, without a traceback."""


# Choices named here, not imported, so that building the parser (every `twinserve ...`, `--help` too) imports
# no verb's module: service.reliability.SCENARIOS and service.loadgen.SHAPES (tests/unit/test_cli_start.py
# checks they agree).
RELIABILITY_SCENARIOS = ("overload", "kill", "soak")
REQUEST_SHAPES = ("1", "8", "mix")


def one_line(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic ValidationError: "field: message; ..." without the URL and input echo
        return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'value'}: {x['msg']}" for x in errors())
    return " ".join(str(e).split())


def print_probe(p) -> None:
    """One probe of a capacity search or sweep (a ``ProbeResult``), printed to stderr as it finishes."""
    p99 = f"{p.latency.p99_ms:7.1f} ms" if p.latency else "    n/a"
    print(f"  {p.phase:7} {p.offered_rps:7.1f} req/s offered {p.answered_rps:7.1f} answered p99 {p99} errors "
          f"{p.error_ratio:6.2%} " + ("pass" if p.passed else "; ".join(p.reasons)), file=sys.stderr, flush=True)


def ratio(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {v}")
        return v
    return parse


non_negative_int, positive_int = _int_at_least(0), _int_at_least(1)


def weight(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v
