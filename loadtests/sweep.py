"""``python loadtests/sweep.py [options]``: the same as ``twinserve loadtest --sweep [options]``.

Steps each variant (forced with X-Variant) through the offered rates, one headless Locust run
per variant, and writes typed JSON with X_slo per variant; ``--help`` lists the options.
The logic lives in ``service/cost/loadtest.py``; this file only spares a person the install.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from service.cli import main

    sys.exit(main(["loadtest", "--sweep", *sys.argv[1:]]))
