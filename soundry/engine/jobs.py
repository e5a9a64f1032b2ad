"""An autoregressive request as the engine batches it: its windows, its melody's chroma per window, and its
``Job`` (shared by the scheduler and the reference loop, ``generate``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from soundry.engine.batch import Job
from soundry.engine.request import GenerationRequest, record_seed
from soundry.engine.windows import Window, plan_windows


def job_windows(model, request: GenerationRequest, max_duration: float | None = None,
                extend_stride: float | None = None) -> list[Window]:
    """The windows a request is decoded in (the audio prompt's codes fill the first window's start)."""
    # Whole frames covering the duration (audiocraft floors; equal when duration is a frame multiple).
    frames = math.ceil(request.duration * model.frame_rate - 1e-6)
    prompt = request.prompt_codes
    prompt_len = 0 if prompt is None else int(prompt.shape[-1])
    if prompt is not None and prompt.shape[0] != model.cfg.n_q:
        raise ValueError(f"prompt codes have {prompt.shape[0]} codebooks, the model {model.cfg.n_q}")
    if prompt is not None and (request.melody is not None or request.melody_chroma is not None):
        raise ValueError("a melody and an audio prompt to continue cannot be combined")
    md = max_duration or model.max_duration
    windows = plan_windows(frames / model.frame_rate, model.frame_rate, md, extend_stride or model.extend_stride,
                           prompt_frames=prompt_len)
    if windows[0].length <= 0:
        raise ValueError(f"duration {request.duration}s is shorter than one frame at {model.frame_rate} Hz")
    if prompt_len >= windows[0].length:
        raise ValueError(f"the audio prompt ({prompt_len / model.frame_rate:.2f} s) must be shorter than the "
                         f"requested duration ({request.duration:g} s) and the model's context ({md:g} s)")
    return windows


def melody_shifts(model, seed: int) -> Callable[[], int]:
    """demucs's time-shift draws for a melody request, from its seed: reproducible, and never from the
    process-wide ``random`` that ``demucs.apply`` would use (the engine serves many requests on many threads)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda: model.melody.draw_shift(gen)


def prepare_melody(model, request: GenerationRequest, windows: list[Window], cache=None,
                   max_duration: float | None = None) -> None:
    """Turn a request's ``melody`` into its per-window ``melody_chroma`` (stem separation and chroma: the
    expensive part, which the engine runs on the submitting thread, not its decode loop)."""
    if (request.melody is not None or request.melody_chroma is not None) and not model.takes_melody:
        raise ValueError(f"{model.name} is not conditioned on a melody")
    if request.melody is not None and request.melody_chroma is None:
        request.melody_chroma = [c[0] for c in model.melody_chromas(
            request.melody[None], request.melody_sample_rate or model.sample_rate, windows,
            melody_shifts(model, record_seed(request)), cache=cache, max_duration=max_duration)]
        request.melody = None


def make_job(model, request: GenerationRequest, cond: tuple[torch.Tensor, torch.Tensor],
             progress: Callable[[int, int], None] | None = None,
             max_duration: float | None = None, extend_stride: float | None = None) -> Job:
    """A request's decode job: its windows, its condition (cross-attended and/or prepended) and its random
    generator (seeded; an unseeded request gets a recorded seed)."""
    windows = job_windows(model, request, max_duration, extend_stride)
    prepare_melody(model, request, windows, max_duration=max_duration)
    gen = torch.Generator(device=model.device)
    gen.manual_seed(record_seed(request))
    job = Job(request, windows, cond[0], cond[1], gen, progress)
    if model.cfg.prepend:
        chromas, text = request.melody_chroma, cond[0]
        job.prefix = lambda w: model.prefix(text, None if chromas is None else chromas[w])
        job.prefix_len = model.prefix_len(text.shape[1])
    if request.prompt_codes is not None:
        job.prompt_codes = request.prompt_codes.to(model.device)
        job.pieces.append(job.prompt_codes)
    return job
