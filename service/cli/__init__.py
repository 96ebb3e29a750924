"""``twinserve <verb>``: one command line for the whole system.

One module per verb group, each with ``add_commands(sub)``; the groups are registered in the order of
``VERB_GROUPS``. Nothing heavy is imported to build the parser (``twinserve --help`` imports no torch,
Ray or numpy): every verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

from service.cli import artifacts, capacity, cost, demo, prune, serve
from service.cli._common import REQUEST_SHAPES, RELIABILITY_SCENARIOS, CliError

__all__ = ["CliError", "REQUEST_SHAPES", "RELIABILITY_SCENARIOS", "build_parser", "main"]

# The verb groups, in the order `twinserve --help` lists them.
VERB_GROUPS = (
    prune,  # prune, bench, frontier
    cost,  # loadtest, report
    capacity,  # capacity, peers
    serve,  # serve
    demo,  # demo, reliability
    artifacts,  # artifacts list | gc | pin | unpin
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinserve", description="Serve a dense and a pruned INT8 twin of one encoder.")
    sub = p.add_subparsers(dest="verb", required=True)
    for group in VERB_GROUPS:
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"twinserve {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, (CliError, *_user_errors())):
            raise
        print(f"twinserve {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


# Errors shown as one line without a traceback, by (module, class). Looked up in sys.modules rather than
# imported: an instance of one can only exist if its module was imported, and importing them all up front
# cost every verb torch (service.pruning.job).
_USER_ERRORS = (
    ("service.pruning.job", "PruneError"),
    ("service.model.config", "ModelLoadError"),
    ("service.pruning.corpus", "CorpusError"),
    ("service.artifacts.manifest", "ArtifactIntegrityError"),
    ("service.artifacts.publishing", "PublishError"),
)


def _user_errors() -> tuple[type[Exception], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in _USER_ERRORS if m in sys.modules)
