"""Streaming cost and latency: time to the first audio and real-time factor of a streamed clip,
against the same clip generated without streaming, in one engine, same run.

    .venv/bin/python bench/stream.py                          # the tiny audiogen test model, 10 s clips
    .venv/bin/python bench/stream.py --model audiogen --duration 10 --repeats 5   # a real model (downloads)

Each repeat runs, one after the other on one engine (batch of 1 each):
  plain    the clip without a sink (the non-streamed path): wall time to the result
  stream   the same clip (same seed) streamed into a sink: time to its first audio chunk, to its last
           chunk, and to the result (the stored-file path, which the stream must not slow by > 10 %)
  1 s      a 1-second clip, plain: "the time to generate the first second of audio plus its decode",
           the target for the first chunk (+10 %)
Figures are medians over repeats; the order within a repeat rotates so drift hits each row alike.
``--http`` measures the same through a live server (the tiny models only): POST a task then GET its
``/stream`` (time to the first and last byte), against POST + poll to COMPLETED (0.1 s polls) of the
plain clip and of the 1 s clip. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundry.engine import Engine, GenerationRequest  # noqa: E402
from soundry.models import load_model  # noqa: E402

TINY = {"tiny-audiogen": ROOT / "tests/data/audiogen-tiny", "tiny-musicgen": ROOT / "tests/data/musicgen-tiny"}


class TimingSink:
    """Listens from the start; records when the first and the last chunk arrive."""

    def __init__(self, start: float):
        self.start, self.first, self.last, self.samples = start, None, None, 0
        self.lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        return True

    def push(self, audio) -> None:
        now = time.perf_counter()
        with self.lock:
            self.first = self.first or now
            self.last = now
            self.samples += audio.shape[-1]


def run_plain(engine: Engine, duration: float, seed: int) -> float:
    t0 = time.perf_counter()
    engine.submit(GenerationRequest("heavy rain on a tin roof", duration, seed=seed)).result()
    return time.perf_counter() - t0


def run_stream(engine: Engine, duration: float, seed: int) -> dict:
    t0 = time.perf_counter()
    sink = TimingSink(t0)
    engine.submit(GenerationRequest("heavy rain on a tin roof", duration, seed=seed), sink=sink).result()
    done = time.perf_counter()
    return {"first": sink.first - t0, "last": sink.last - t0, "result": done - t0, "samples": sink.samples}


class HttpRuns:
    """The three measurements through a live soundry server (uvicorn in this process)."""

    def __init__(self, model: str):
        import tempfile

        from tests.live_server import start_live_server

        os.environ["SOUNDRY_MODEL_PATHS"] = f"audiogen={TINY['tiny-audiogen']},musicgen={TINY['tiny-musicgen']}"
        from soundry.config import Settings

        data = tempfile.mkdtemp(prefix="soundry-bench-")
        self.model = "musicgen" if "musicgen" in model else "audiogen"
        self.server = start_live_server(Settings.load(config_file=f"{data}/none.toml", data_dir=data, max_batch=4,
                                                      requests_per_minute=0))
        import httpx

        self.http = httpx.Client(base_url=self.server.url, timeout=600,
                                 headers={"Authorization": f"Bearer {self.server.api_key}"})

    def _create(self, duration: float, seed: int) -> str:
        body = {"prompt": "heavy rain on a tin roof", "configs": {"model": self.model, "duration": duration,
                                                                 "seed": seed}}
        return self.http.post("/v1/ai/audio_generation", json=body).json()["data"]["task_id"]

    def _until_done(self, task_id: str) -> None:
        while self.http.get(f"/v1/ai/audio_generation/{task_id}").json()["data"]["data"]["status"] != "COMPLETED":
            time.sleep(0.1)

    def plain(self, duration: float, seed: int) -> float:
        t0 = time.perf_counter()
        self._until_done(self._create(duration, seed))
        return time.perf_counter() - t0

    def stream(self, duration: float, seed: int) -> dict:
        t0 = time.perf_counter()
        task_id = self._create(duration, seed)
        first = None
        size = 0
        with self.http.stream("GET", f"/v1/ai/audio_generation/{task_id}/stream") as r:
            for chunk in r.iter_raw():
                first = first or time.perf_counter()
                size += len(chunk)
        last = time.perf_counter()
        self._until_done(task_id)
        return {"first": first - t0, "last": last - t0, "result": time.perf_counter() - t0, "samples": size}

    def close(self) -> None:
        self.http.close()
        self.server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-audiogen", help="tiny-audiogen, tiny-musicgen, a model name or a path")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--http", action="store_true", help="through a live server (POST, GET …/stream, polling)")
    args = ap.parse_args()

    if args.http:
        runs = HttpRuns(args.model)
        plain_run, stream_run, stop = runs.plain, runs.stream, runs.close
    else:
        model = load_model(str(TINY.get(args.model, args.model)), device=args.device)
        engine = Engine(model, max_batch=4).start()
        plain_run = lambda d, i: run_plain(engine, d, i)  # noqa: E731
        stream_run = lambda d, i: run_stream(engine, d, i)  # noqa: E731
        stop = engine.stop
    try:
        plain_run(1.0, 0)  # warm-up (loads the model)
        rows: dict[str, list] = {"plain": [], "stream": [], "one_second": []}
        jobs = [("plain", lambda i: plain_run(args.duration, i)),
                ("stream", lambda i: stream_run(args.duration, i)),
                ("one_second", lambda i: plain_run(1.0, i))]
        for i in range(args.repeats):
            for name, job in jobs[i % 3:] + jobs[: i % 3]:
                rows[name].append(job(i))
    finally:
        stop()

    med = statistics.median
    plain = med(rows["plain"])
    one_second = med(rows["one_second"])
    first = med(r["first"] for r in rows["stream"])
    last = med(r["last"] for r in rows["stream"])
    result = med(r["result"] for r in rows["stream"])
    out = {
        "model": args.model, "device": args.device, "http": args.http, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "duration_s": args.duration, "repeats": args.repeats,
        "plain_s": round(plain, 3), "stream_result_s": round(result, 3),
        "stream_overhead": round(result / plain - 1, 4),
        "first_audio_s": round(first, 3), "one_second_clip_s": round(one_second, 3),
        "first_audio_vs_one_second": round(first / one_second, 3),
        "stream_last_chunk_s": round(last, 3), "stream_rtf": round(last / args.duration, 3),
        "plain_rtf": round(plain / args.duration, 3),
    }
    print(f"{'HTTP, ' if args.http else ''}model {args.model} on {args.device} ({out['threads']} threads, "
          f"{out['cpus']} CPUs), "
          f"{args.duration:g} s clips, median of {args.repeats}")
    print(f"{'measure':44s} {'seconds':>9s}")
    print(f"{'plain clip: submit → result':44s} {plain:9.3f}")
    print(f"{'streamed clip: submit → result':44s} {result:9.3f}   ({100 * (result / plain - 1):+.1f} % vs plain)")
    print(f"{'streamed clip: submit → first audio':44s} {first:9.3f}   ({first / one_second:.2f}x the 1 s clip)")
    print(f"{'streamed clip: submit → last audio':44s} {last:9.3f}   (real-time factor {last / args.duration:.3f})")
    print(f"{'1 s clip: submit → result (target for first)':44s} {one_second:9.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
