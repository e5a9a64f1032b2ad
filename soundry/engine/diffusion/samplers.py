"""One request's sampler state: its sigma schedule, its position in it and its noise source, with the update
diffusers' scheduler makes, written per row so that a row's arithmetic is the same whatever shares its batch.

- ``CosineDPMSolverSDE``: Stable Audio Open's ``CosineDPMSolverMultistepScheduler`` (SDE-DPM-Solver++, EDM
  preconditioning, v-prediction): the initial latents from the request's generator, then every step's noise from a
  ``torchsde.BrownianInterval`` seeded with the generator's seed, as diffusers' ``BrownianTreeNoiseSampler`` builds it.
- ``FlowMatchPingPong``: Stable Audio 3's ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``: x0 from the
  velocity, then re-noised to the next sigma with one draw from the request's generator at every step.

The arithmetic (float32 0-dim sigma tensors, the order of operations) is diffusers 0.42.1's, so that a row gives
the pipeline's numbers for that request alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAO_CONFIG = {"sigma_schedule": ("exponential", "karras"), "final_sigmas_type": ("zero", "sigma_min"),
              "solver_order": (1, 2), "solver_type": ("midpoint", "heun"),
              "prediction_type": ("v_prediction", "epsilon")}
SA3_OFF = ("use_dynamic_shifting", "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
           "use_beta_sigmas", "invert_sigmas")


def check_scheduler(kind: str, config: dict) -> None:
    """Refuse a scheduler configuration whose branch soundry does not implement (rather than sample wrongly)."""
    if kind == "sao":
        for key, allowed in SAO_CONFIG.items():
            if config.get(key) not in allowed:
                raise ValueError(f"scheduler {key}={config.get(key)!r} is not supported (only {allowed})")
    else:
        on = [k for k in SA3_OFF if config.get(k)]
        if on or not config.get("stochastic_sampling", False):
            raise ValueError(f"scheduler options {on or ['stochastic_sampling=False']} are not supported; soundry "
                             "runs SA3's stochastic flow-match Euler sampler")


def sao_schedule(config: dict, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [steps + 1] ending with the final sigma, DiT timesteps atan(σ)·2/π [steps]), float32."""
    smin, smax = config["sigma_min"], config["sigma_max"]
    ramp = torch.linspace(0, 1, steps)
    if config["sigma_schedule"] == "karras":
        rho = config["rho"]
        lo, hi = smin ** (1 / rho), smax ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    else:
        sigmas = torch.linspace(math.log(smin), math.log(smax), len(ramp)).exp().flip(0)
    sigmas = sigmas.to(torch.float32)
    timesteps = sigmas.atan() / math.pi * 2
    last = 0 if config["final_sigmas_type"] == "zero" else smin
    return torch.cat([sigmas, torch.tensor([last], dtype=torch.float32)]), timesteps


def sa3_schedule(config: dict, steps: int, logsnr_min: float = -6.2,
                 logsnr_max: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [steps + 1] ending with 0, DiT timesteps σ·num_train_timesteps [steps]), float32: the log-SNR
    schedule of ``StableAudio3Pipeline`` through ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)``."""
    t = torch.linspace(1.0, 0.0, steps + 1)
    logsnr = logsnr_max - t * (logsnr_max - logsnr_min)
    sig = torch.sigmoid(-logsnr)
    sig[0] = 1.0
    s = np.array(sig[:-1].tolist()).astype(np.float32)
    shift = config.get("shift", 1.0)
    s = shift * s / (1 + (shift - 1) * s)
    sigmas = torch.from_numpy(s).to(dtype=torch.float32)
    timesteps = sigmas * config["num_train_timesteps"]
    return torch.cat([sigmas, torch.zeros(1)]), timesteps


class RowSampler:
    """A row's position in its schedule and its noise; ``model_input`` → DiT → ``update``, ``steps`` times."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __init__(self, steps: int, seed: int, shape: tuple[int, ...], device: torch.device):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.steps, self.seed, self.shape, self.device = steps, seed, shape, torch.device(device)
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.i = 0

    @property
    def done(self) -> bool:
        return self.i >= self.steps

    def _randn(self) -> torch.Tensor:
        """A draw of the latent shape from the row's generator (on the CPU, then moved: as diffusers'
        ``randn_tensor`` with a CPU generator)."""
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float32).to(self.device)

    def initial_latents(self) -> torch.Tensor:
        raise NotImplementedError

    def model_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def update(self, x: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CosineDPMSolverSDE(RowSampler):
    """SAO's sampler for one row (see the module docstring)."""

    def __init__(self, config: dict, steps: int, seed: int, shape: tuple[int, ...], device: torch.device):
        super().__init__(steps, seed, shape, device)
        self.config = config
        self.sigmas, self.timesteps = sao_schedule(config, steps)
        self.outputs: list[torch.Tensor | None] = [None] * config["solver_order"]
        self.lower_order_nums = 0
        self.tree = None

    def initial_latents(self) -> torch.Tensor:
        return self._randn() * ((self.config["sigma_max"] ** 2 + 1) ** 0.5)

    def model_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigmas[self.i]
        c_in = 1 / ((sigma ** 2 + self.config["sigma_data"] ** 2) ** 0.5)
        return x * c_in, self.timesteps[self.i]

    def _noise(self, x0: torch.Tensor) -> torch.Tensor:
        """tree(σ_i, σ_i+1) / sqrt(|σ_i+1 − σ_i|). The tree is built at the first step, as diffusers builds it."""
        if self.tree is None:
            import torchsde

            lo, hi = torch.as_tensor(self.config["sigma_min"]), torch.as_tensor(self.config["sigma_max"])
            self.tree = torchsde.BrownianInterval(t0=lo, t1=hi, size=x0.shape, dtype=x0.dtype, device=x0.device,
                                                  entropy=self.seed, tol=1e-6, pool_size=24, halfway_tree=True)
        a, b = torch.as_tensor(self.sigmas[self.i]), torch.as_tensor(self.sigmas[self.i + 1])
        if float(b) == 0.0:  # the last step to σ = 0 multiplies its noise by 0: diffusers' draw changes nothing
            return torch.zeros_like(x0)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        return (self.tree(lo, hi) * sign) / (b - a).abs().sqrt()

    def update(self, x: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        cfg, n, i = self.config, self.steps, self.i
        sigma, sd = self.sigmas[i], cfg["sigma_data"]
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = (-1 if cfg["prediction_type"] == "v_prediction" else 1) * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
        x0 = c_skip * x + c_out * model_output
        lower_order_final = i == n - 1 and (cfg.get("euler_at_final") or (cfg.get("lower_order_final") and n < 15)
                                            or cfg["final_sigmas_type"] == "zero")
        self.outputs = [*self.outputs[1:], x0]
        noise = self._noise(x0).to(x0.device)
        one = torch.tensor(1)
        sigma_t, sigma_s = self.sigmas[i + 1], self.sigmas[i]
        lambda_t, lambda_s = torch.log(one) - torch.log(sigma_t), torch.log(one) - torch.log(sigma_s)
        h = lambda_t - lambda_s
        head = (sigma_t / sigma_s * torch.exp(-h)) * x
        tail = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        if cfg["solver_order"] == 1 or self.lower_order_nums < 1 or lower_order_final:
            out = head + (one * (1 - torch.exp(-2.0 * h))) * x0 + tail
        else:
            sigma_s1 = self.sigmas[i - 1]
            lambda_s1 = torch.log(one) - torch.log(sigma_s1)
            m0, m1 = self.outputs[-1], self.outputs[-2]
            r0 = (lambda_s - lambda_s1) / h
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)
            if cfg["solver_type"] == "midpoint":
                out = (head + (one * (1 - torch.exp(-2.0 * h))) * d0
                       + 0.5 * (one * (1 - torch.exp(-2.0 * h))) * d1 + tail)
            else:
                out = (head + (one * (1 - torch.exp(-2.0 * h))) * d0
                       + (one * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1 + tail)
        if self.lower_order_nums < cfg["solver_order"]:
            self.lower_order_nums += 1
        self.i += 1
        return out


class FlowMatchPingPong(RowSampler):
    """SA3's sampler for one row (see the module docstring)."""

    def __init__(self, config: dict, steps: int, seed: int, shape: tuple[int, ...], device: torch.device):
        super().__init__(steps, seed, shape, device)
        self.sigmas, self.timesteps = sa3_schedule(config, steps)

    def initial_latents(self) -> torch.Tensor:
        return self._randn()

    def model_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.timesteps[self.i]

    def update(self, x: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        sigma, nxt = self.sigmas[self.i], self.sigmas[self.i + 1]
        x0 = x.to(torch.float32) - sigma * model_output
        noise = self._randn()  # drawn at every step, the last too (where it is multiplied by 0)
        self.i += 1
        return (1.0 - nxt) * x0 + nxt * noise


def make_sampler(kind: str, config: dict, steps: int, seed: int, shape: tuple[int, ...],
                 device: torch.device) -> RowSampler:
    cls = CosineDPMSolverSDE if kind == "sao" else FlowMatchPingPong
    return cls(config, steps, seed, shape, device)
