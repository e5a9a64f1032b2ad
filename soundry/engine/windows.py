"""How a clip longer than the model's context is cut into windows (audiocraft's continuation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    length: int  # frames this window's LM call produces (prompt included)
    prompt: int  # frames at its start copied from the previous window's tail
    start: int = 0  # frame of the clip where the window starts (audiocraft's current_gen_offset)


def plan_windows(duration: float, frame_rate: float, max_duration: float, extend_stride: float,
                 prompt_frames: int = 0) -> list[Window]:
    """Windows as in audiocraft's ``_generate_tokens``: the first starts from ``prompt_frames`` of an
    audio prompt (``generate_continuation``), each later one from the previous window's last
    ``length - stride`` frames; prompt and new frames add up to ``int(duration * fr)``."""
    total = int(duration * frame_rate + 1e-6)  # + eps: 0.74 s at 50 Hz is 37 frames, not 36
    if duration <= max_duration:
        return [Window(total, prompt_frames, 0)]
    if not 0 < extend_stride < max_duration:
        raise ValueError(f"extend_stride must be in (0, max_duration={max_duration}), got {extend_stride}")
    stride = int(frame_rate * extend_stride)
    windows, offset, prompt = [], 0, prompt_frames
    while offset + prompt < total:
        chunk = min(duration - offset / frame_rate, max_duration)
        length = int(chunk * frame_rate + 1e-6)
        windows.append(Window(length, prompt, offset))
        prompt = max(0, length - stride)
        offset += stride
    return windows
