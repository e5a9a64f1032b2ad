"""bench/load.py end to end: 200 concurrent creates against a real server with the tiny model —
none lost or duplicated, no 5xx, no connection dropped without an answer (overload is answered
with 429/503 + Retry-After, which the script honours), and the engine batched them (timings are
reported, not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_hundred_concurrent_tasks(tiny_models):
    out = subprocess.run([sys.executable, "bench/load.py", "-n", "200", "--duration", "0.5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["created"] == res["completed"] == res["unique_ids"] == res["history_total"] == 200
    assert res["lost"] == res["duplicated"] == res["http_5xx"] == res["dropped"] == 0  # every request answered
    assert res["mean_batch_size"] > 4  # concurrent tasks shared decode steps
