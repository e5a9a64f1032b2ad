"""Rows of denoising requests stepped together: each row at its own step of its own schedule.

One DiT call per group of rows whose latents have the same length (SA3's variable length: grouping, never padding,
so no row's attention sees another length); a request using guidance adds its unconditional row beside its
conditional one, a request without guidance has one row. The sampler update and the guidance mix are per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from soundry.engine.diffusion.samplers import RowSampler, check_scheduler, make_sampler
from soundry.models.stable_audio.model import Condition

Progress = Callable[[int, int], None]


@dataclass
class DiffusionJob:
    """One request in the batch: its condition, guidance, sampler (schedule position and noise) and latents."""

    id: str
    duration: float
    guidance: float
    cond: Condition
    sampler: RowSampler
    x: torch.Tensor  # [1, C, L]
    progress: Progress | None = None
    meta: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.sampler.done

    @property
    def length(self) -> int:
        return int(self.x.shape[-1])


def make_job(model, job_id: str, prompt: str, duration: float, guidance: float, steps: int, seed: int,
             negative_prompt: str | None = None, progress: Progress | None = None) -> DiffusionJob:
    """Encode a request and draw its initial latents from its own generator (seeded with ``seed``)."""
    model.check_duration(duration)
    check_scheduler(model.kind, model.scheduler_config)
    cond = model.encode_prompt(prompt, duration, guidance, negative_prompt)
    shape = (1, model.latent_channels, model.latent_length(duration))
    sampler = make_sampler(model.kind, model.scheduler_config, steps, seed, shape, model.device)
    return DiffusionJob(job_id, duration, guidance, cond, sampler, sampler.initial_latents(), progress)


class DiffusionBatch:
    """The running set of jobs; ``step`` advances every job by one of its own steps."""

    def __init__(self, model):
        self.model = model
        self.jobs: list[DiffusionJob] = []

    def admit(self, job: DiffusionJob) -> None:
        self.jobs.append(job)

    def remove(self, job: DiffusionJob) -> None:
        self.jobs.remove(job)

    def groups(self) -> dict[int, list[DiffusionJob]]:
        by_len: dict[int, list[DiffusionJob]] = {}
        for job in self.jobs:
            by_len.setdefault(job.length, []).append(job)
        return by_len

    @torch.no_grad()
    def step(self) -> list[DiffusionJob]:
        """One step for every job; returns (and removes) the jobs that took their last step."""
        for jobs in self.groups().values():
            self._step_group(jobs)
        finished = [j for j in self.jobs if j.done]
        for job in finished:
            self.jobs.remove(job)
        return finished

    def _step_group(self, jobs: list[DiffusionJob]) -> None:
        xs, ts, ctx, glob, masks = [], [], [], [], []
        for job in jobs:
            x_in, t = job.sampler.model_input(job.x)
            c = job.cond
            branches = [(c.uncond_context, c.uncond_mask), (c.context, c.mask)] if c.guided else [(c.context, c.mask)]
            for context, mask in branches:
                xs.append(x_in)
                ts.append(t.reshape(1))
                ctx.append(context)
                glob.append(c.global_states)
                masks.append(mask)
        device = self.model.device
        out = self.model.denoise(torch.cat(xs), torch.cat(ts).to(device), torch.cat(ctx), torch.cat(glob),
                                 None if masks[0] is None else torch.cat(masks))
        row = 0
        for job in jobs:
            if job.cond.guided:
                u, c = out[row:row + 1], out[row + 1:row + 2]
                v, row = u + job.guidance * (c - u), row + 2
            else:
                v, row = out[row:row + 1], row + 1
            job.x = job.sampler.update(job.x, v)
            if job.progress is not None:
                job.progress(job.sampler.i, job.sampler.steps)
