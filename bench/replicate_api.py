"""What the Replicate translation costs: wall time of one clip through the unmodified ``replicate`` client
against the same clip through soundry's own API, on one live server (tiny models, loopback).

    .venv/bin/python bench/replicate_api.py                     # tiny musicgen, 2 s clips, 5 repeats
    .venv/bin/python bench/replicate_api.py --duration 4 --repeats 9

Rows (medians over repeats; the order rotates within a repeat so drift hits each row alike):
  flexstack     POST /v1/ai/audio_generation, poll every 0.1 s to COMPLETED, GET the signed file
  replicate.run client.run("meta/musicgen", ...): Prefer: wait holds the create until the end; the output
                is a data: URL read in place
  create+wait   client.predictions.create, then prediction.wait() (the client polls every 0.5 s)
Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import replicate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_settings  # noqa: E402
from tests.helpers_models import TINY  # noqa: E402
from tests.live_server import start_live_server  # noqa: E402


def flexstack(server, duration: float, seed: int) -> float:
    start = time.perf_counter()
    h = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=h) as http:
        task = http.post("/v1/ai/audio_generation", json={"prompt": "a waltz", "configs": {
            "model": "musicgen", "duration": duration, "seed": seed}}).json()["data"]["task_id"]
        while (d := http.get(f"/v1/ai/audio_generation/{task}").json()["data"]["data"])["status"] != "COMPLETED":
            time.sleep(0.1)
        assert http.get(d["url_download"]).content
    return time.perf_counter() - start


def replicate_run(client, duration: float, seed: int) -> float:
    start = time.perf_counter()
    out = client.run("meta/musicgen", input={"model_version": "musicgen", "prompt": "a waltz", "duration": duration,
                                             "seed": seed})
    assert out.read()
    return time.perf_counter() - start


def create_wait(client, duration: float, seed: int) -> float:
    start = time.perf_counter()
    p = client.predictions.create(model="meta/musicgen", input={"model_version": "musicgen", "prompt": "a waltz",
                                                                "duration": duration, "seed": seed})
    p.wait()
    assert p.status == "succeeded" and p.output
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import os

    os.environ["SOUNDRY_MODEL_PATHS"] = f"musicgen={TINY['musicgen']}"
    server = start_live_server(make_settings(Path(tempfile.mkdtemp()), default_model="musicgen"))
    client = replicate.Client(api_token=server.api_key, base_url=server.url)
    rows = {"flexstack": lambda s: flexstack(server, args.duration, s),
            "replicate.run": lambda s: replicate_run(client, args.duration, s),
            "create+wait": lambda s: create_wait(client, args.duration, s)}
    try:
        rows["flexstack"](0)  # the model loads once, before timing
        times: dict[str, list[float]] = {k: [] for k in rows}
        names = list(rows)
        for i in range(args.repeats):
            for name in names[i % 3:] + names[:i % 3]:
                times[name].append(rows[name](i + 1))
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny musicgen, {args.duration:g} s clips, {args.repeats} repeats (median wall seconds)")
    for name, t in med.items():
        print(f"  {name:<14} {t:7.3f} s   ({t / med['flexstack']:.2f}x flexstack)")
    print(json.dumps({"bench": "replicate_api", "duration": args.duration, "repeats": args.repeats,
                      "median_seconds": {k: round(v, 4) for k, v in med.items()}}))


if __name__ == "__main__":
    main()
