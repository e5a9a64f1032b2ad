"""The reference loop for the diffusion family: ``generate`` over one ``DiffusionBatch`` (what each diffusers
pipeline computes for each prompt alone, prompt i with seed + i)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from soundry.engine.diffusion.batch import DiffusionBatch, make_job


@dataclass
class DiffusionOutput:
    audio: torch.Tensor  # [B, C, N] float32
    latents: torch.Tensor  # [B, C_latent, L] the final latents
    sample_rate: int
    seeds: list[int]


@torch.no_grad()
def generate_diffusion(model, prompts: list[str] | str, duration: float = 5.0, seed: int | None = None,
                       cfg_coef: float | None = None, steps: int | None = None,
                       negative_prompts: list[str | None] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> DiffusionOutput:
    """Generate a batch of clips of one duration; every prompt is its own row with its own noise (seed + i; an
    unseeded call draws one seed). ``cfg_coef`` and ``steps`` default to the model's. ``progress(done, total)``
    counts steps."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negs = list(negative_prompts) if negative_prompts is not None else [None] * len(prompts)
    if len(negs) != len(prompts):
        raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    guidance = model.default_guidance if cfg_coef is None else float(cfg_coef)
    n_steps = model.default_steps if steps is None else int(steps)
    batch = DiffusionBatch(model)
    jobs = [make_job(model, str(i), p, duration, guidance, n_steps, seed + i, neg)
            for i, (p, neg) in enumerate(zip(prompts, negs, strict=True))]
    for job in jobs:
        batch.admit(job)
    done = 0
    while batch.jobs:
        batch.step()
        done += 1
        if progress is not None:
            progress(done, n_steps)
    audio = torch.cat([model.decode(j.x, duration) for j in jobs])  # one row at a time, as each alone
    return DiffusionOutput(audio, torch.cat([j.x for j in jobs]), model.sample_rate,
                           [seed + i for i in range(len(prompts))])
