"""MultiBand Diffusion (MBD): MusicGen's tokens decoded by four diffusion U-Nets, one per frequency band, then
re-equalised against the EnCodec decode; the math of audiocraft 1.3.0's ``MultiBandDiffusion.tokens_to_wav``
(``models/multibanddiffusion.py``, ``models/unet.py``'s ``DiffusionUnet``, ``modules/diffusion_schedule.py``'s
``NoiseSchedule.generate_subsampled`` and ``MultiBandProcessor``), read from the ``facebook/multiband-diffusion``
release file ``mbd_musicgen_32khz.th``.

Randomness comes only from a CPU ``torch.Generator`` seeded per call, drawing what audiocraft draws after
``torch.manual_seed(seed)`` in the same order (per half, per band: the initial noise, then one draw per step but
the last); the global RNG is never touched. Stereo codes are decoded as two mono halves (the official demo's way),
batched together through each U-Net with one generator per half.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
import typing
from pathlib import Path

import julius
import torch
import torch.nn.functional as F
from torch import nn

from soundry.models.audiocraft.codecs.encodec import Codec, InterleavedStereo
from soundry.models.errors import CheckpointError
from soundry.models.transfer import to_device

RELEASE_FILE = "mbd_musicgen_32khz.th"
DEFAULT_STEPS = list(range(1000))[::-50] + [0]  # audiocraft's default: 20 U-Net passes a band
EQ_BANDS = 32


def _release_globals() -> list:
    """The classes the release's pickled OmegaConf configs need, and nothing more (its pickle imports are exactly
    these plus torch's tensor rebuilders); ``torch.load(weights_only=True)`` refuses any other global."""
    from omegaconf import DictConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [dict, collections.defaultdict, typing.Any, DictConfig, ContainerMetadata, Metadata, AnyNode]


def read_release(path: str | Path) -> dict:
    """The release package with each band's ``cfg`` as a plain dict; ``path`` is the file or its folder."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)
    if path.is_dir():
        path = path / RELEASE_FILE
    # weights_only: the unpickler only builds tensors and the allow-listed OmegaConf classes; a file naming any
    # other global (os.system, ...) is refused before anything in it runs.
    with torch.serialization.safe_globals(_release_globals()):
        try:
            pkg = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for a refused global; zip/IO errors for a damaged file
            raise CheckpointError(f"{path}: not a MultiBand Diffusion release file ({e.__class__.__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e
    for i in range(int(pkg["n_bands"])):
        if isinstance(pkg[i]["cfg"], DictConfig):
            pkg[i]["cfg"] = OmegaConf.to_container(pkg[i]["cfg"], resolve=True)
    return pkg


# -- the U-Net (audiocraft's DiffusionUnet without its transformer / BiLSTM bottleneck) --------------------------
class _ResBlock(nn.Module):
    def __init__(self, ch: int, groups: int, dilation: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, ch), nn.GroupNorm(groups, ch)
        self.conv1 = nn.Conv1d(ch, ch, 3, 1, dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(ch, ch, 3, 1, dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


def _res_blocks(ch: int, groups: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[_ResBlock(ch, groups, 2 ** i) for i in range(n)])


class _Down(nn.Module):
    def __init__(self, chin: int, chout: int, kernel: int, stride: int, groups: int, res_blocks: int):
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)
        self.norm = nn.GroupNorm(groups, chout)
        self.res_blocks = _res_blocks(chout, groups, res_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.conv.stride[0]
        x = F.pad(x, (0, (stride - x.shape[-1] % stride) % stride))
        return self.res_blocks(F.relu(self.norm(self.conv(x))))


class _Up(nn.Module):
    def __init__(self, chin: int, chout: int, kernel: int, stride: int, groups: int, res_blocks: int):
        super().__init__()
        self.res_blocks = _res_blocks(chin, groups, res_blocks)
        self.norm = nn.GroupNorm(groups, chin)
        self.convtr = nn.ConvTranspose1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


class DiffusionUNet(nn.Module):
    """Encoder / decoder of strided convolutions with skips, the step index added through embeddings after each
    encoder level. Module names follow audiocraft's state dict. audiocraft adds the codec latent (``conv_codec``,
    nearest-upsampled to the bottleneck) in place to the bottleneck tensor, which is also the deepest skip, then
    replaces the bottleneck by zeros when the U-Net has neither a transformer nor a BiLSTM (``score/basic``, the
    release's config): so the latent reaches the decoder only through that skip, which is what is computed here."""

    LAYER_KEYS = ("kernel", "stride", "norm_groups", "res_blocks", "dropout")

    def __init__(self, chin: int = 1, hidden: int = 24, depth: int = 3, growth: float = 2.0,
                 max_channels: int = 10_000, num_steps: int = 1000, emb_all_layers: bool = False,
                 codec_dim: int | None = None, kernel: int = 4, stride: int = 2, norm_groups: int = 4,
                 res_blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.embedding = nn.Embedding(num_steps, hidden)
        self.embeddings = nn.ModuleList() if emb_all_layers else None
        layer = dict(kernel=kernel, stride=stride, groups=norm_groups, res_blocks=res_blocks)
        for d in range(depth):
            self.encoders.append(_Down(chin, hidden, **layer))
            self.decoders.insert(0, _Up(hidden, chin, **layer))
            if self.embeddings is not None and d > 0:
                self.embeddings.append(nn.Embedding(num_steps, hidden))
            chin, hidden = hidden, min(int(hidden * growth), max_channels)
        self.conv_codec = nn.Conv1d(codec_dim, chin, 1) if codec_dim is not None else None

    @classmethod
    def from_cfg(cls, cfg: dict) -> DiffusionUNet:
        """From a band's config (``channels``, ``schedule.num_steps``, ``diffusion_unet``), refusing what this
        U-Net does not implement with the key's name."""
        unet = dict(cfg["diffusion_unet"])
        for key in ("transformer", "bilstm", "cross_attention"):
            if unet.pop(key, False):
                raise CheckpointError(f"MultiBand Diffusion config diffusion_unet.{key}=true is not supported")
        known = {"hidden", "depth", "growth", "max_channels", "emb_all_layers", "codec_dim", *cls.LAYER_KEYS}
        if unknown := set(unet) - known:
            raise CheckpointError(f"MultiBand Diffusion config diffusion_unet.{sorted(unknown)[0]} is not supported")
        return cls(chin=int(cfg["channels"]), num_steps=int(cfg["schedule"]["num_steps"]), **unet)

    def forward(self, x: torch.Tensor, step: int, condition: torch.Tensor | None) -> torch.Tensor:
        steps = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        skips, z = [], x
        for idx, encoder in enumerate(self.encoders):
            z = encoder(z)
            emb = self.embedding if idx == 0 else (self.embeddings[idx - 1] if self.embeddings is not None else None)
            if emb is not None:
                z = z + emb(steps)[:, :, None]
            skips.append(z)
        if self.conv_codec is not None:  # the codec latent joins the deepest skip (see the class docstring)
            if condition is None:
                raise ValueError("this U-Net is conditioned on the codec latent")
            skips[-1] = skips[-1] + F.interpolate(self.conv_codec(condition), z.shape[-1])
        z = torch.zeros_like(z)
        for decoder in self.decoders:
            s = skips.pop()
            z = decoder(z[..., : s.shape[-1]] + s)
        return z[..., : x.shape[-1]]


# -- schedule and sample processor ---------------------------------------------------------------------------
class _BandProcessor(nn.Module):
    """audiocraft's ``MultiBandProcessor.return_sample``: each mel band rescaled back by its training statistics
    (identity for a band trained without it)."""

    def __init__(self, cfg: dict, sample_rate: int, state: dict[str, torch.Tensor]):
        super().__init__()
        self.use = bool(cfg.get("use")) and cfg.get("name") == "multi_band_processor"
        if self.use:
            self.split = julius.SplitBands(sample_rate, n_bands=int(cfg["n_bands"]))
            counts = state["counts"]
            mean = state["sum_x"] / counts
            std = (state["sum_x2"] / counts - mean ** 2).clamp(min=0).sqrt()
            target_std = state["sum_target_x2"] / counts  # (sic: audiocraft's target_std has no square root)
            self.register_buffer("scale", ((std / target_std) ** float(cfg["power_std"])).view(-1, 1, 1, 1))
            self.register_buffer("mean", mean.view(-1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.split(x) * self.scale + self.mean).sum(dim=0) if self.use else x


class _Band(nn.Module):
    """One band: its U-Net, its noise schedule (power repartition of the betas) and its sample processor."""

    def __init__(self, cfg: dict, sample_rate: int, model_state: dict, processor_state: dict):
        super().__init__()
        s = cfg["schedule"]
        if s.get("repartition", "power") != "power" or s.get("n_bands") is not None:
            raise CheckpointError("MultiBand Diffusion schedule: only repartition=power with n_bands=null is supported")
        self.unet = DiffusionUNet.from_cfg(cfg)
        self.unet.load_state_dict(model_state)
        self.unet.eval()
        self.processor = _BandProcessor(cfg["processor"], sample_rate, processor_state)
        e = float(s["beta_exp"])
        betas = torch.linspace(float(s["beta_t0"]) ** (1 / e), float(s["beta_t1"]) ** (1 / e), int(s["num_steps"]),
                               dtype=torch.float) ** e
        self.register_buffer("betas", betas, persistent=False)
        self.host_betas = betas.clone()  # a plain attribute, so it stays on the CPU: the schedule's scalars
        self.clip, self.rescale, self.noise_scale = float(s["clip"]), float(s["rescale"]), float(s["noise_scale"])

    def alpha_bar(self, step: int) -> torch.Tensor:
        return (1 - self.betas[: step + 1]).prod()

    @torch.no_grad()
    def generate(self, initial: torch.Tensor, condition: torch.Tensor, step_list: list[int],
                 noise: typing.Callable[[], torch.Tensor], dtype: torch.dtype,
                 after_pass: typing.Callable[[], None] | None = None) -> torch.Tensor:
        """``NoiseSchedule.generate_subsampled``: the reverse process through the states of ``step_list``;
        ``noise()`` gives each step's fresh noise (shaped as ``initial``, already on its device); ``after_pass()``
        runs after each U-Net pass."""
        current = initial * self.noise_scale
        for step, (estimate_coef, sqrt_alpha, sigma) in zip(step_list[:-1], self.schedule(step_list), strict=True):
            estimate = self.unet(current.to(dtype), step, condition).float() * self.noise_scale
            previous = (current - estimate_coef * estimate) / sqrt_alpha
            if sigma > 0:
                previous = previous + sigma * noise() * self.noise_scale
            if self.clip:
                previous = previous.clamp(-self.clip, self.clip)
            if step == 0:
                previous = previous * self.rescale
            current = previous
            if after_pass is not None:
                after_pass()
        return self.processor(current)


    def schedule(self, step_list: list[int]) -> list[tuple[float, float, float]]:
        """Per U-Net pass of the reverse process, its scalars as Python floats computed on the host (float32, as
        audiocraft computes them): the estimate's coefficient (1 - α) / √(1 - ᾱ), √α and the noise's σ.
        On a GPU nothing of the schedule is read back from the device (``if sigma2 > 0`` on a CUDA scalar was
        a sync every pass)."""
        betas = self.host_betas
        ab_sub = (1 - betas).cumprod(dim=0)[list(reversed(step_list))]
        betas_sub = 1 - torch.cat([ab_sub[:1], ab_sub[1:] / ab_sub[:-1]])
        alpha_bar = (1 - betas).prod()
        out = []
        for idx, step in enumerate(step_list[:-1]):
            alpha = 1 - betas_sub[-1 - idx]
            if step == step_list[-2]:
                sigma2, previous_alpha_bar = torch.tensor(0.0), torch.tensor(1.0)
            else:
                previous_alpha_bar = (1 - betas[: step_list[idx + 1] + 1]).prod()
                sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
            out.append((((1 - alpha) / (1 - alpha_bar).sqrt()).item(), alpha.sqrt().item(),
                        (sigma2 ** 0.5).item()))
            alpha_bar = previous_alpha_bar
        return out


def _noise_draws(step_list: list[int]) -> int:
    """How many ``randn_like`` a band's reverse process makes (every step but the last draws)."""
    return max(len(step_list) - 2, 0)


def _on_side_stream(method):
    """On CUDA, run the decode on the decoder's own stream (made once; it first waits for the caller's stream),
    so its U-Net passes run beside an engine's decode steps instead of queued between them on one stream."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        dev = self._codec_device()
        if dev.type != "cuda":
            return method(self, *args, **kwargs)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=dev)
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            return method(self, *args, **kwargs)

    return run


class MultiBandDiffusion:
    """``tokens_to_wav(tokens [B, K, T], seed, step_list=None) -> [B, C, N]`` float32 on the CPU; the bands run on
    the codec's device in ``dtype``. Contract details in ``tokens_to_wav``."""

    def __init__(self, pkg: dict, codec: Codec, dtype: torch.dtype = torch.float32, bands: nn.ModuleList | None = None):
        """``bands``: networks already built (``with_codec``) instead of the package's."""
        self.codec = codec
        self.mono = codec.mono if isinstance(codec, InterleavedStereo) else codec
        self.sample_rate = int(pkg["sample_rate"])
        if self.mono.channels != 1:
            raise CheckpointError(f"MultiBand Diffusion decodes a mono codec (this one has {self.mono.channels} "
                                  "channels)")
        if int(self.mono.sample_rate) != self.sample_rate:
            raise CheckpointError(f"MultiBand Diffusion runs at {self.sample_rate} Hz, the codec at "
                                  f"{self.mono.sample_rate} Hz")
        self.bands = bands if bands is not None else nn.ModuleList(
            _Band(pkg[i]["cfg"], self.sample_rate, pkg[i]["model_state"], pkg[i]["processor_state"])
            for i in range(int(pkg["n_bands"])))
        latent_dim = self.mono.decode_latent(torch.zeros(1, self.mono.n_q, 1, dtype=torch.long,
                                                         device=self._codec_device())).shape[1]
        for i, band in enumerate(self.bands):
            conv = band.unet.conv_codec
            if conv is not None and conv.in_channels != latent_dim:
                raise CheckpointError(f"MultiBand Diffusion band {i} reads a {conv.in_channels}-dim codec latent, "
                                      f"the codec's is {latent_dim}")
        self.dtype = dtype
        self._stream = None  # on CUDA, the decoder's own stream (_on_side_stream)
        self.bands.to(self._codec_device()).eval()
        self.eq = julius.SplitBands(self.sample_rate, n_bands=EQ_BANDS).to(self._codec_device())
        for band in self.bands:  # the schedule and the processor stay float32
            band.unet.to(dtype)

    def _codec_device(self) -> torch.device:
        return next(self.codec.parameters()).device

    @property
    def device(self) -> torch.device:
        return self._codec_device()

    def with_codec(self, codec: Codec) -> MultiBandDiffusion:
        """The same decoder over another model's codec (checked as at load). On the same device the networks are
        shared, not copied: every MusicGen model a worker serves uses one set of MBD weights."""
        device = next(codec.parameters()).device
        bands = self.bands if device == self._codec_device() else copy.deepcopy(self.bands)
        return MultiBandDiffusion({"sample_rate": self.sample_rate}, codec, self.dtype, bands=bands)

    def _checked(self, step_list: list[int]) -> list[int]:
        """Strictly decreasing states of the chain (so every step but the last draws its noise, which the second
        half's generator relies on)."""
        steps = [int(s) for s in step_list]
        n = len(self.bands[0].betas)
        if not steps or any(a <= b for a, b in itertools.pairwise(steps)) or steps[0] >= n or steps[-1] < 0:
            raise ValueError(f"step_list must be strictly decreasing steps in [0, {n}): {step_list}")
        return steps

    def halves(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The mono code sets: the codes themselves, or stereo's left (0, 2, 4, ...) and right (1, 3, 5, ...)."""
        k, n_q = tokens.shape[1], self.mono.n_q
        if k == n_q:
            return [tokens]
        if k == 2 * n_q:
            return [tokens[:, 0::2], tokens[:, 1::2]]
        raise ValueError(f"MultiBand Diffusion: {k} codebooks, expected {n_q} (mono) or {2 * n_q} (stereo)")

    @torch.no_grad()
    @_on_side_stream
    def tokens_to_wav(self, tokens: torch.Tensor, seed: int, step_list: list[int] | None = None,
                      details: dict | None = None,
                      progress: typing.Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Decode ``tokens`` [B, K, T] to audio [B, C, N] (C = 1, or 2 for stereo codes), float32 on the CPU.

        As audiocraft after ``torch.manual_seed(seed)``, per mono half: the EnCodec decode, the sum of the bands'
        reverse processes from fresh noise, then the 32-band re-EQ matching each band's standard deviation to the
        EnCodec decode's (over all B rows of the call, as audiocraft: a row's output depends on the rows decoded
        with it, so decode a request's rows together for reproducibility). ``step_list``, strictly decreasing chain
        states, defaults to ``range(1000)[::-50] + [0]`` (21 states: 20 U-Net passes a band). ``details``, when
        given, receives the stages (``wav_encodec``, ``wav_diffusion``, ``band_outputs`` and ``initial_noises``
        [halves * bands, B, 1, N], half-major). ``progress(done, total)`` runs after each of the U-Net passes (an
        exception it raises stops the decode: how a canceled task stops).
        """
        step_list = self._checked(DEFAULT_STEPS if step_list is None else step_list)
        dev = self._codec_device()
        halves = [to_device(h, dev) for h in self.halves(tokens)]
        rows = tokens.shape[0]
        both = torch.cat(halves)  # [H * B, K / H, T]: the halves batched through the codec and the U-Nets
        ref = self.mono.decode(both).float()
        condition = self.mono.decode_latent(both).to(self.dtype)
        shape = (rows, *ref.shape[1:])
        # One generator per half: the second starts where audiocraft's single stream would be after the first
        # half's draws (drawn once and dropped, so the halves run through each U-Net together).
        gens = [torch.Generator().manual_seed(int(seed))]
        per_half = len(self.bands) * (1 + _noise_draws(step_list))
        for _ in halves[1:]:
            g = torch.Generator()
            g.set_state(gens[-1].get_state())
            for _ in range(per_half):
                torch.randn(shape, generator=g)
            gens.append(g)

        def draw() -> torch.Tensor:
            return to_device(torch.cat([torch.randn(shape, generator=g) for g in gens]), dev)  # pinned, non-blocking

        out = torch.zeros_like(ref)
        band_outputs, initial_noises = [], []
        passes = {"done": 0, "total": len(self.bands) * (len(step_list) - 1)}

        def after_pass() -> None:
            passes["done"] += 1
            if progress is not None:
                progress(passes["done"], passes["total"])

        for band in self.bands:
            initial = draw()
            y = band.generate(initial, condition, step_list, draw, self.dtype, after_pass)
            out += y
            if details is not None:
                band_outputs.append(y.cpu())
                initial_noises.append(initial.cpu())
        wav = torch.cat([re_eq(o, r, self.eq) for o, r in zip(out.split(rows), ref.split(rows), strict=True)])
        if details is not None:
            details.update(wav_encodec=_channels(ref.cpu(), rows), wav_diffusion=_channels(out.cpu(), rows),
                           band_outputs=_per_half(band_outputs, rows), initial_noises=_per_half(initial_noises, rows))
        return _channels(wav.cpu(), rows)


def _channels(x: torch.Tensor, rows: int) -> torch.Tensor:
    """[H * B, 1, N] (halves stacked) -> [B, H, N]."""
    return torch.cat(x.split(rows), dim=1)


def _per_half(xs: list[torch.Tensor], rows: int) -> torch.Tensor:
    """Per band [H * B, 1, N] -> [H * bands, B, 1, N], half-major as audiocraft's call order."""
    return torch.stack([h for half in zip(*(x.split(rows) for x in xs), strict=True) for h in half])


def re_eq(wav: torch.Tensor, ref: torch.Tensor, split: julius.SplitBands) -> torch.Tensor:
    """audiocraft's ``MultiBandDiffusion.re_eq``: each mel band of ``wav`` (``split``: 32 in audiocraft) scaled so
    its standard deviation (over the whole tensor) matches ``ref``'s."""
    bands, bands_ref = split(wav), split(ref)
    out = torch.zeros_like(ref)
    for band, band_ref in zip(bands, bands_ref, strict=True):
        out += band * (band_ref.std() / band.std())
    return out


def load_mbd(path: str | Path, codec: Codec, dtype: torch.dtype = torch.float32) -> MultiBandDiffusion:
    """MultiBand Diffusion from ``path`` (the release file or a folder holding ``mbd_musicgen_32khz.th``) over
    ``codec`` (a MusicGen model's ``codec``: mono, or the stereo wrapper whose mono codec each half uses)."""
    return MultiBandDiffusion(read_release(path), codec, dtype=dtype)
