"""Prometheus metrics at ``/metrics``: request latency, queue depth, tasks by status, and the
engines' batch sizes, steps/s and generation seconds per audio second (embedded mode)."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELED")


class _StateCollector:
    """Read at scrape time: task counts from the database, engine counters from memory."""

    def __init__(self, services):
        self.svc = services

    def collect(self):
        counts = self.svc.store.status_counts()
        tasks = GaugeMetricFamily("soundry_tasks", "Tasks by status", labels=["status"])
        for status in STATUSES:
            tasks.add_metric([status], counts.get(status, 0))
        yield tasks
        depth = GaugeMetricFamily("soundry_queue_depth", "PENDING tasks per model", labels=["model"])
        for model, n in self.svc.store.pending_by_model().items():
            depth.add_metric([model], n)
        yield depth
        bounds = (1.0, 2.0, 3.0, 4.0, 5.0)
        below, count, total = self.svc.store.rating_histogram(bounds)
        ratings = HistogramMetricFamily("soundry_task_rating", "Owners' ratings of tasks (POST /v1/ai/feedback)")
        ratings.add_metric([], [(f"{b:g}", n) for b, n in zip(bounds, below, strict=True)] + [("+Inf", count)],
                           sum_value=total)
        yield ratings
        engines = self.svc.engines.loaded() if self.svc.engines is not None else {}
        if not engines:
            return
        steps = CounterMetricFamily("soundry_engine_steps", "Decode steps", labels=["model"])
        step_s = CounterMetricFamily("soundry_engine_step_seconds", "Time spent in decode steps", labels=["model"])
        rate = GaugeMetricFamily("soundry_engine_steps_per_second", "Decode steps per second of step time",
                                 labels=["model"])
        audio = CounterMetricFamily("soundry_engine_audio_seconds", "Audio generated", labels=["model"])
        gen = CounterMetricFamily("soundry_engine_generation_seconds", "Submit-to-audio time of completed "
                                  "requests", labels=["model"])
        per = GaugeMetricFamily("soundry_generation_seconds_per_audio_second", "Wall seconds per audio second",
                                labels=["model"])
        info = GaugeMetricFamily("soundry_engine_info", "A loaded model: its precision, decode-step "
                                 "compilation state (off, compiling, on, failed) and weight layout (rows, "
                                 "packed, int8, plain); value 1", labels=["model", "precision", "compiled", "weights"])
        size = HistogramMetricFamily("soundry_engine_batch_size", "Requests in the batch at each decode step",
                                     labels=["model"])
        for name, engine in engines.items():
            st = engine.stats
            info.add_metric([name, engine.model.precision, engine.compile_state, engine.model.weights], 1)
            steps.add_metric([name], st.steps)
            step_s.add_metric([name], st.step_seconds)
            rate.add_metric([name], st.steps / st.step_seconds if st.step_seconds else 0.0)
            audio.add_metric([name], st.audio_seconds)
            gen.add_metric([name], st.generation_seconds)
            per.add_metric([name], st.generation_seconds / st.audio_seconds if st.audio_seconds else 0.0)
            sizes = dict(st.batch_sizes)
            buckets = [(str(b), sum(c for n, c in sizes.items() if n <= b)) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
            buckets.append(("+Inf", sum(sizes.values())))
            size.add_metric([name], buckets, sum_value=sum(n * c for n, c in sizes.items()))
        yield from (steps, step_s, rate, audio, gen, per, info, size)


def install_metrics(app: FastAPI, services) -> None:
    registry = CollectorRegistry()
    latency = Histogram("soundry_http_request_duration_seconds", "HTTP request latency",
                        ["method", "route", "status"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    registry.register(_StateCollector(services))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        latency.labels(request.method, path, str(response.status_code)).observe(time.perf_counter() - start)
        return response

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
