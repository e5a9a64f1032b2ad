"""Load test: N concurrent create requests against a soundry server, polled to completion.

    .venv/bin/python bench/load.py                    # starts a server with the tiny test models
    .venv/bin/python bench/load.py --url http://host:8000 --api-key sk-…   # or load a running one

Reports: tasks lost or duplicated (must be 0), 5xx answers (must be 0), connections dropped
without an answer (must be 0), answers that asked the client to come back later (429/503 with
Retry-After, which the client honours and retries), p50/p99 latency of the create and poll
requests, wall time to drain the queue, and the engine's batch sizes read from
/metrics (embedded mode), which show whether concurrent tasks were batched. Prints a table and a
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def start_server(max_batch: int) -> tuple[subprocess.Popen, str, str]:
    """A `soundry serve` on the tiny models with limits raised for the load."""
    tiny = ROOT / "tests" / "data"
    data = Path(tempfile.mkdtemp(prefix="soundry-load-"))
    env = {**os.environ, "SOUNDRY_MODEL_PATHS": f"audiogen={tiny / 'audiogen-tiny'},musicgen={tiny / 'musicgen-tiny'}",
           "SOUNDRY_REQUESTS_PER_MINUTE": "0", "SOUNDRY_MAX_ACTIVE_TASKS_PER_USER": "100000",
           "SOUNDRY_MAX_QUEUED_AUDIO_SECONDS_PER_USER": "0", "SOUNDRY_MAX_BATCH": str(max_batch)}
    cli = [sys.executable, "-m", "soundry.cli.main", "--data-dir", str(data)]
    subprocess.run([*cli, "users", "create", "load", "--password", "load password"], env=env, check=True,
                   capture_output=True)
    key = subprocess.run([*cli, "users", "token", "load"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


async def run_load(url: str, key: str, n: int, duration: float, model: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    create_lat, poll_lat, statuses_5xx, dropped, retried = [], [], 0, 0, 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        async def send(method: str, path: str, **kwargs) -> httpx.Response | None:
            """One request, repeated while the server says come back later (429/503 + Retry-After);
            None when the connection was dropped without an answer (counted, never retried: a create
            may have been stored)."""
            nonlocal dropped, retried
            for _ in range(100):
                try:
                    r = await client.request(method, path, **kwargs)
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                    dropped += 1
                    return None
                if r.status_code in (429, 503) and "retry-after" in r.headers:
                    retried += 1
                    await asyncio.sleep(float(r.headers["retry-after"]))
                    continue
                return r
            return r

        async def create(i: int) -> str | None:
            nonlocal statuses_5xx
            t0 = time.perf_counter()
            r = await send("POST", "/v1/ai/audio_generation", json={
                "prompt": f"load test clip {i}", "configs": {"model": model, "duration": duration, "seed": i}})
            create_lat.append(time.perf_counter() - t0)
            if r is None:
                return None
            statuses_5xx += r.status_code >= 500
            return r.json()["data"]["task_id"] if r.status_code == 201 else None

        start = time.perf_counter()
        ids = await asyncio.gather(*(create(i) for i in range(n)))
        creates_seconds = time.perf_counter() - start  # until the last create was answered
        created = [t for t in ids if t]
        final: dict[str, str] = {}

        async def poll(task_id: str) -> None:
            nonlocal statuses_5xx
            while True:
                t0 = time.perf_counter()
                r = await send("GET", f"/v1/ai/audio_generation/{task_id}")
                poll_lat.append(time.perf_counter() - t0)
                if r is None:
                    await asyncio.sleep(0.5)
                    continue
                statuses_5xx += r.status_code >= 500
                if r.status_code == 200 and (s := r.json()["data"]["data"]["status"]) in (
                        "COMPLETED", "FAILED", "CANCELED"):
                    final[task_id] = s
                    return
                await asyncio.sleep(0.5)

        await asyncio.gather(*(poll(t) for t in created))
        drain = time.perf_counter() - start
        history = (await client.get("/v1/user/history", params={"limit": 1})).json()["data"]["total"]
        metrics = (await client.get("/metrics")).text
    sizes = {int(float(m.group(1))): float(m.group(2)) for m in re.finditer(
        r'soundry_engine_batch_size_bucket\{le="([0-9.]+)",model="[^"]+"\} ([0-9.e+]+)', metrics)}
    total = re.search(r'soundry_engine_batch_size_count\{model="[^"]+"\} ([0-9.e+]+)', metrics)
    summed = re.search(r'soundry_engine_batch_size_sum\{model="[^"]+"\} ([0-9.e+]+)', metrics)
    steps = float(total.group(1)) if total else 0.0
    return {
        "requests": n, "created": len(created), "unique_ids": len(set(created)), "history_total": history,
        "completed": sum(s == "COMPLETED" for s in final.values()), "lost": len(created) - len(final),
        "duplicated": len(created) - len(set(created)), "http_5xx": statuses_5xx, "dropped": dropped,
        "retried_after": retried,
        "create_p50_ms": 1000 * percentile(create_lat, 50), "create_p99_ms": 1000 * percentile(create_lat, 99),
        "poll_p50_ms": 1000 * percentile(poll_lat, 50), "poll_p99_ms": 1000 * percentile(poll_lat, 99),
        "polls": len(poll_lat), "creates_seconds": creates_seconds,
        "creates_per_second": len(created) / creates_seconds, "drain_seconds": drain, "engine_steps": steps,
        "mean_batch_size": (float(summed.group(1)) / steps) if steps else 0.0,
        "steps_at_batch_1": sizes.get(1, 0.0), "steps_at_batch_gt_8": steps - sizes.get(8, 0.0),
        "median_create_ms": 1000 * statistics.median(create_lat) if create_lat else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start one with the tiny models)")
    ap.add_argument("--api-key")
    ap.add_argument("-n", "--requests", type=int, default=200)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--model", default="audiogen")
    ap.add_argument("--max-batch", type=int, default=16, help="engine batch size of the started server")
    args = ap.parse_args()
    proc = None
    if args.url:
        url, key = args.url, args.api_key
    else:
        proc, url, key = start_server(args.max_batch)
    try:
        res = asyncio.run(run_load(url, key, args.requests, args.duration, args.model))
    finally:
        if proc:
            proc.terminate()
            proc.wait(20)
    for k, v in res.items():
        print(f"{k:>22}: {v:.1f}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(json.dumps({"bench": "load", **{k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}}))
    ok = (res["lost"] == 0 and res["duplicated"] == 0 and res["http_5xx"] == 0 and res["dropped"] == 0
          and res["history_total"] == res["created"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
