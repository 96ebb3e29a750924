"""Real Locust, headless, against the REAL service (the session's Ray Serve application, tiny artifacts).

The locustfile is the user-facing load tool (``locust -f loadtests/locustfile.py --host ...``); this
runs it as a person would, for a few seconds per variant (forced with ``--twinserve-variant``, some
requests carrying several texts), and reads Locust's own statistics: requests were made and none
failed (the locustfile fails any answer that is not a 200 with one embedding per input). No timing is
asserted. X_slo is measured by the open-loop generator, not Locust (``test_loadtest_standin.py``).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_plain_locust_cli_against_the_real_service(serve_app, tmp_path, variant):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSERVE_LOADTEST_")}
    prefix = tmp_path / "locust"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "3", "-r", "3", "-t", "4s",
         "--host", serve_app.url, "--only-summary", "--csv", str(prefix), "--twinserve-variant", variant,
         "--twinserve-per-user-rps", "2", "--twinserve-multi-share", "0.5", "--twinserve-max-inputs", "4",
         "--twinserve-user-pool", "20", "--twinserve-seed", "11"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]  # Locust exits 1 when any request failed
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    embed = rows["/v1/embeddings"]
    assert int(embed["Request Count"]) >= 3, embed  # 3 users at 2 req/s for 4 s: a dozen or so
    assert int(embed["Failure Count"]) == 0, (embed, out[-3000:])
    assert not (tmp_path / "locust_failures.csv").read_text().strip().splitlines()[1:]
