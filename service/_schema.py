"""What every typed file of twinserve shares: the strict base model, the typed-JSON loader, the variants' names.

At the bottom layer with ``service._platform`` (tests/unit/test_import_layers.py): it imports nothing from the
rest of ``service``, so that the artifact contract, the pruning job, serving, the load tests and the cost report
can all use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["VARIANTS", "Strict", "load_json"]

# The two variants of the model, dense first (the order of tables, plots and loops that do not say otherwise).
VARIANTS = ("dense", "pruned")


class Strict(BaseModel):
    """A pydantic model that rejects unknown keys: a misspelt field in a config or result file is an error."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


def load_json(path: str | Path, model: type[M], *, what: str, missing: str = "",
              error: type[Exception] = ValueError) -> M:
    """``path`` read as ``model``, or ``error`` with one message a person can act on.

    ``what`` names the file ("twinserve capacity file"); ``missing`` says what writes one, added to the message
    when the file is not there. Not found: "<what> <path> not found: <missing>"; unreadable or not valid:
    "<path> is not a <what>: <why>".
    """
    path = Path(path)
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise error(f"{what} {path} not found" + (f": {missing}" if missing else "")) from None
    except (ValidationError, ValueError, OSError) as e:
        raise error(f"{path} is not a {what}: {e}") from None
