"""MusicGen-melody's melody condition: demucs stems, chroma, projection (audiocraft's ``ChromaStemConditioner``).

What audiocraft 1.3.0 computes for a melody model (``MusicGen.get_pretrained`` sets ``match_len_on_eval``, so the
chroma is tiled or cut to the training length and never masked):

1. the user's melody is converted to the model's rate and channels (``melody_to_model``, julius as audiocraft);
2. the conditioner's collate mixes it down to mono (``wav.mean(1)``);
3. demucs's ``htdemucs`` separates it (converted to 44.1 kHz stereo; ``apply_model`` with one random time shift and
   split segments); ``vocals + other`` are summed and converted back to the model's rate, mono;
4. ``ChromaExtractor``: power spectrogram (2^14 points), chroma filter bank, inf-norm, one-hot argmax;
5. the chroma is tiled or cut to ``chroma_len`` frames (235 for 30 s) and projected by ``output_proj``.

A wave of one sample (what audiocraft gives a request without a melody, and the CFG null branch when the whole batch
is null) skips demucs; its chroma is bin 0 in every frame. When audiocraft batches a real melody with its CFG null,
the null rows are zero-padded to the melody's length and go through demucs, whose output for silence is silence:
the chroma is bin 0 in every frame all the same.

The one difference from audiocraft: demucs draws its time shift with the process-wide ``random.randint``; here the
shift is an argument (``draw_shift`` draws it from a ``torch.Generator``), and ``random`` is never touched (HTDemucs's
transformer also calls ``random.randrange(1)``, always 0, for its positional embedding: ``_pin_positional_shift``).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundry.models.errors import CheckpointError

DEMUCS_NAME = "htdemucs"
# Classes a demucs safetensors file may name (its metadata's ``klass``), checked before anything is imported or
# built: htdemucs (and its fine-tuned bags) are bags of HTDemucs; the bag itself is built here from the yaml.
ALLOWED_DEMUCS_CLASSES = frozenset({"demucs.htdemucs.HTDemucs"})
MELODY_STEMS = ("vocals", "other")
SELF_WAV_PREFIX = "condition_provider.conditioners.self_wav."
_SIG = re.compile(r"^[A-Za-z0-9_-]+$")


# --- chroma -------------------------------------------------------------------------------------------------------

def chroma_filter_bank(sample_rate: int, n_fft: int, n_chroma: int = 12, tuning: float = 0.0, ctroct: float = 5.0,
                       octwidth: float | None = 2.0, norm: float = 2.0, base_c: bool = True) -> np.ndarray:
    """librosa's ``filters.chroma`` (0.10, float32 out): [n_chroma, 1 + n_fft // 2] Gaussian bumps per chroma bin.

    Reimplemented in numpy rather than depending on librosa, which would pull numba and llvmlite for this one
    function; the arithmetic follows librosa's step by step (float64 throughout, float32 at the end)."""
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    frqbins = n_chroma * np.log2(frequencies / (a440 / 16))  # librosa's hz_to_octs, in chroma bins
    # the 0 Hz bin: 1.5 octaves below bin 1 (so chroma is 50% rotated from bin 1, and bin width is broad)
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidthbins = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1]))
    dist = np.subtract.outer(frqbins, np.arange(0, n_chroma, dtype="d")).T
    n_chroma2 = np.round(float(n_chroma) / 2)
    dist = np.remainder(dist + n_chroma2 + 10 * n_chroma, n_chroma) - n_chroma2  # into -n_chroma/2 .. n_chroma/2
    wts = np.exp(-0.5 * (2 * dist / np.tile(binwidthbins, (n_chroma, 1))) ** 2)
    wts = _normalize_columns(wts, norm)
    if octwidth is not None:
        wts *= np.tile(np.exp(-0.5 * (((frqbins / n_chroma - ctroct) / octwidth) ** 2)), (n_chroma, 1))
    if base_c:
        wts = np.roll(wts, -3 * (n_chroma // 12), axis=0)
    return np.ascontiguousarray(wts[:, : int(1 + n_fft / 2)], dtype=np.float32)


def _normalize_columns(wts: np.ndarray, norm: float) -> np.ndarray:
    """librosa's ``util.normalize(S, norm, axis=0)`` for a positive (or infinite) norm: columns whose norm is below
    the smallest normal float are left as they are."""
    mag = np.abs(wts).astype(float)
    if norm == np.inf:
        length = np.max(mag, axis=0, keepdims=True)
    elif norm > 0:
        length = np.sum(mag ** norm, axis=0, keepdims=True) ** (1.0 / norm)
    else:
        raise ValueError(f"chroma filter norm must be positive or inf, not {norm}")
    length[length < np.finfo(wts.dtype).tiny] = 1.0
    return wts / length


class ChromaExtractor(nn.Module):
    """audiocraft's ``ChromaExtractor`` without torchaudio or librosa: [B, 1, N] (or [B, N]) → [B, T, n_chroma].

    torchaudio's ``Spectrogram(power=2, normalized=True, center=True, pad=0)`` is ``torch.stft`` with a periodic
    Hann window and reflect padding, divided by the window's L2 norm, then squared magnitudes."""

    def __init__(self, sample_rate: int, n_chroma: int = 12, radix2_exp: int = 12, nfft: int | None = None,
                 winlen: int | None = None, winhop: int | None = None, argmax: bool = False,
                 norm: float = math.inf):
        super().__init__()
        self.winlen = winlen or 2 ** radix2_exp
        self.nfft = nfft or self.winlen
        self.winhop = winhop or (self.winlen // 4)
        self.sample_rate = sample_rate
        self.n_chroma = n_chroma
        self.norm = norm
        self.argmax = argmax
        self.register_buffer("fbanks", torch.from_numpy(chroma_filter_bank(sample_rate, self.nfft, n_chroma)),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(self.winlen), persistent=False)

    def frames(self, length: int) -> int:
        """How many chroma frames a wave of ``length`` samples gives (short waves are padded to ``nfft``)."""
        return 1 + max(length, self.nfft) // self.winhop

    def power_spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """[..., N] → [..., 1 + nfft // 2, frames], as torchaudio's Spectrogram computes it."""
        shape = wav.shape
        spec = torch.stft(wav.reshape(-1, shape[-1]), n_fft=self.nfft, hop_length=self.winhop,
                          win_length=self.winlen, window=self.window, center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        spec /= self.window.pow(2.0).sum().sqrt()
        return spec.abs().pow(2.0)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        length = wav.shape[-1]
        if length < self.nfft:  # a nullified (one-sample) wave: padded to one window, centred
            pad = self.nfft - length
            wav = F.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0)
        spec = self.power_spectrogram(wav).squeeze(1)
        raw_chroma = torch.einsum("cf,...ft->...ct", self.fbanks, spec)
        norm_chroma = F.normalize(raw_chroma, p=self.norm, dim=-2, eps=1e-6).transpose(-1, -2)
        if self.argmax:
            idx = norm_chroma.argmax(-1, keepdim=True)
            norm_chroma = torch.zeros_like(norm_chroma).scatter_(-1, idx, 1.0)
        return norm_chroma


# --- demucs -------------------------------------------------------------------------------------------------------

def _check_demucs_file(path: Path) -> None:
    """Refuse a demucs safetensors file whose metadata names a class outside ``ALLOWED_DEMUCS_CLASSES`` (demucs's
    own loader imports and instantiates whatever class the file names), or a packed state that would import more."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"cannot read demucs weights {path}: {exc}") from exc
    klass = metadata.get("klass")
    if klass not in ALLOWED_DEMUCS_CLASSES:
        raise CheckpointError(f"demucs weights {path} name the class {klass!r}, which soundry does not build "
                              f"(allowed: {', '.join(sorted(ALLOWED_DEMUCS_CLASSES))})")
    if "structure" in metadata:
        raise CheckpointError(f"demucs weights {path} hold a packed (quantized) state, which soundry does not load")
    for key in ("args", "kwargs"):
        try:
            json.loads(metadata.get(key, ""))
        except ValueError:
            raise CheckpointError(f"demucs weights {path}: metadata {key!r} is not JSON") from None


def _pin_positional_shift(model: nn.Module) -> nn.Module:
    """HTDemucs's cross transformer draws its sinusoid's offset with ``random.randrange(sin_random_shift + 1)``, which
    is 0 for htdemucs (``t_sin_random_shift=0``) but advances the process-wide ``random``: on these instances the
    embedding is computed at offset 0 directly (the same values, no draw)."""
    from demucs.transformer import CrossTransformerEncoder, create_sin_embedding

    def sin_embedding(self, length, batch, channels, device):
        return create_sin_embedding(length, channels, shift=0, device=device, max_period=self.max_period)

    for module in model.modules():
        if isinstance(module, CrossTransformerEncoder) and module.emb == "sin":
            if module.sin_random_shift:
                raise CheckpointError(f"demucs model with t_sin_random_shift={module.sin_random_shift} draws a random "
                                      "offset at inference, which soundry does not reproduce")
            module._get_pos_embedding = MethodType(sin_embedding, module)
    return model


def _load_bag(bag_yaml: Path, model_file) -> Any:
    """A ``BagOfModels`` as ``demucs.hf.get_hf_model`` builds it, each file checked before it is loaded;
    ``model_file(sig)`` gives the path of ``<sig>.safetensors``."""
    import yaml
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model

    try:
        bag = yaml.safe_load(Path(bag_yaml).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read demucs bag {bag_yaml}: {exc}") from exc
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not sigs or not all(isinstance(s, str) and _SIG.match(s) for s in sigs):
        raise CheckpointError(f"demucs bag {bag_yaml} names no models (expected `models: [<signature>, ...]`)")
    paths = [Path(model_file(sig)) for sig in sigs]
    for path in paths:
        _check_demucs_file(path)
    models = [_pin_positional_shift(load_safetensors_model(path)) for path in paths]
    return BagOfModels(models, bag.get("weights"), bag.get("segment")).eval()


def load_demucs(folder: Path | None, name: str = DEMUCS_NAME) -> Any:
    """demucs's ``name`` bag from a local ``demucs/`` folder (``<name>.yaml`` and ``<sig>.safetensors``, demucs 4.1's
    hub layout), or, without a folder, from the Hugging Face hub the way ``demucs.pretrained.get_model`` fetches it
    (files cached by ``huggingface_hub``; once cached it loads offline)."""
    if folder is not None:
        folder = Path(folder)
        if not (folder / f"{name}.yaml").is_file():
            raise CheckpointError(f"demucs folder {folder} has no {name}.yaml")
        return _load_bag(folder / f"{name}.yaml", lambda sig: folder / f"{sig}.safetensors")
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    from huggingface_hub import hf_hub_download

    from soundry.models.errors import ModelNotAvailable

    repo_id = f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}"

    def hub_file(filename: str) -> str:
        try:  # the cache first, so a host without the hub does not wait on it
            return hf_hub_download(repo_id, filename, local_files_only=True)
        except Exception:  # not cached yet
            return hf_hub_download(repo_id, filename)

    try:
        return _load_bag(Path(hub_file(f"{name}.yaml")), lambda sig: hub_file(f"{sig}.safetensors"))
    except CheckpointError:
        raise
    except Exception as exc:
        raise ModelNotAvailable(f"demucs {name} ({repo_id}) is not in the local cache and the Hugging Face hub is "
                                f"unreachable ({type(exc).__name__}); put it in a demucs/ folder beside the "
                                "release") from exc


_SHARED: dict[tuple[str, str], Any] = {}
_SHARED_LOCK = threading.Lock()


class SeparationCanceled(Exception):
    """A stem separation stopped because the event given to ``cancellable`` was set."""


_SEPARATING = threading.local()  # .stop: the calling thread's cancel event while it separates


@contextmanager
def cancellable(stop: threading.Event):
    """Stem separations on this thread raise ``SeparationCanceled`` at demucs's next layer once ``stop`` is set (a
    window of a long tune takes seconds to tens of seconds; a layer, a fraction of a second)."""
    _SEPARATING.stop = stop
    try:
        yield
    finally:
        _SEPARATING.stop = None


def _raise_if_canceled(_module, _args) -> None:
    stop = getattr(_SEPARATING, "stop", None)
    if stop is not None and stop.is_set():
        raise SeparationCanceled()


def shared_demucs(folder: Path | None, device: torch.device | str = "cpu") -> Any:
    """One demucs bag per (folder or hub, device) for the whole process, loaded on first use; every layer checks
    for a cancel (``cancellable``) before it runs."""
    key = (str(Path(folder).resolve()) if folder is not None else "hub:" + DEMUCS_NAME, str(torch.device(device)))
    with _SHARED_LOCK:
        if key not in _SHARED:
            bag = load_demucs(folder).to(device)
            for module in bag.modules():
                module.register_forward_pre_hook(_raise_if_canceled)
            _SHARED[key] = bag
        return _SHARED[key]


def max_shift(samplerate: int = 44100) -> int:
    """The largest time shift demucs's ``apply_model`` draws (half a second)."""
    return int(0.5 * samplerate)


def draw_shift(generator: torch.Generator, samplerate: int = 44100) -> int:
    """One time shift for ``separate``, uniform in [0, max_shift] like ``random.randint(0, max_shift)``."""
    return int(torch.randint(0, max_shift(samplerate) + 1, (1,), generator=generator).item())


def _shifts_per_model(shift: int | Sequence[int], n_models: int) -> list[int]:
    shifts = [int(shift)] if isinstance(shift, Integral) else [int(s) for s in shift]
    if len(shifts) != n_models:
        raise ValueError(f"demucs bag of {n_models} models needs {n_models} time shifts, got {len(shifts)}")
    return shifts


def _apply_shifted(model: nn.Module, mix: torch.Tensor, offset: int) -> torch.Tensor:
    """What ``apply_model(model, mix, shifts=1)`` does for one model, its ``random.randint`` draw being ``offset``:
    pad by half a second each side, run the split path from ``offset``, cut back."""
    from demucs.apply import TensorChunk, apply_model

    length, limit = mix.shape[-1], max_shift(model.samplerate)
    if not 0 <= offset <= limit:
        raise ValueError(f"demucs time shift must be in [0, {limit}], got {offset}")
    padded = TensorChunk(mix).padded(length + 2 * limit)
    shifted = TensorChunk(padded, offset, length + limit - offset)
    out = apply_model(model, shifted, shifts=0, split=True, overlap=0.25, device=mix.device)
    return out[..., limit - offset:]


@torch.no_grad()
def separate(bag, mix: torch.Tensor, shift: int | Sequence[int]) -> torch.Tensor:
    """``apply_model(bag, mix)`` with its defaults (shifts=1, split, overlap 0.25), the time shift of each model in
    the bag given: [B, C, N] at the bag's rate and channels → [B, sources, C, N]."""
    from demucs.apply import BagOfModels

    if not isinstance(bag, BagOfModels):
        return _apply_shifted(bag, mix, _shifts_per_model(shift, 1)[0])
    estimates: float | torch.Tensor = 0.0
    totals = [0.0] * len(bag.sources)
    for sub_model, weights, offset in zip(bag.models, bag.weights, _shifts_per_model(shift, len(bag.models)),
                                          strict=True):
        out = _apply_shifted(sub_model, mix, offset)
        for k, weight in enumerate(weights):
            out[:, k, :, :] *= weight
            totals[k] += weight
        estimates = estimates + out
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


@torch.no_grad()
def melody_stems(bag, wav: torch.Tensor, sample_rate: int, shift: int | Sequence[int],
                 out_rate: int) -> torch.Tensor:
    """audiocraft's ``ChromaStemConditioner._get_stemmed_wav``: [B, C, N] at ``sample_rate`` → ``vocals + other``,
    [B, 1, N'] at ``out_rate``."""
    from demucs.audio import convert_audio

    mix = convert_audio(wav, sample_rate, bag.samplerate, bag.audio_channels)
    stems = separate(bag, mix, shift)
    indices = torch.tensor([bag.sources.index(s) for s in MELODY_STEMS], device=stems.device)
    return convert_audio(stems[:, indices].sum(1), bag.samplerate, out_rate, 1)


def melody_to_model(wav: torch.Tensor, sample_rate: int, model_rate: int, channels: int) -> torch.Tensor:
    """The user's melody at the model's rate and channels, as ``MusicGen.generate_with_chroma`` converts it
    (audiocraft's ``convert_audio``: julius' ``resample_frac`` first, then the channels). soundry's
    ``audio.convert.convert_audio`` resamples with soxr and would differ slightly from audiocraft's chroma input."""
    import julius
    from demucs.audio import convert_audio_channels

    return convert_audio_channels(julius.resample_frac(wav.float(), int(sample_rate), int(model_rate)), channels)


# --- the conditioner ----------------------------------------------------------------------------------------------

class MelodyConditioner(nn.Module):
    """The ``self_wav`` condition of a melody model: ``chroma`` (demucs stems → chroma, tiled or cut to
    ``chroma_len``), ``null_chroma`` (no melody), and ``forward`` (the projection, never masked)."""

    def __init__(self, dim: int, sample_rate: int = 32000, n_chroma: int = 12, radix2_exp: int = 14,
                 duration: float = 30.0, demucs_dir: Path | None = None, **chroma_kwargs):
        super().__init__()
        self.sample_rate = sample_rate
        self.duration = duration
        self.demucs_dir = Path(demucs_dir) if demucs_dir is not None else None
        self.extractor = ChromaExtractor(sample_rate, n_chroma=n_chroma, radix2_exp=radix2_exp, **chroma_kwargs)
        self.output_proj = nn.Linear(n_chroma, dim)
        self.chroma_len = self.extractor.frames(int(sample_rate * duration))  # audiocraft's _get_chroma_len

    @property
    def device(self) -> torch.device:
        return self.output_proj.weight.device

    @property
    def demucs(self):
        """The shared demucs bag (loaded on first use)."""
        return shared_demucs(self.demucs_dir, self.device)

    def shifts_needed(self) -> int:
        """How many time shifts one separation takes (one per model in the demucs bag; htdemucs: 1)."""
        return len(self.demucs.models)

    def draw_shift(self, generator: torch.Generator) -> int:
        """A time shift for ``chroma``/``stems`` (htdemucs's bag has one model, so one shift)."""
        return draw_shift(generator, self.demucs.samplerate)

    def stems(self, wav: torch.Tensor, shift: int | Sequence[int], sample_rate: int | None = None) -> torch.Tensor:
        """``vocals + other`` of [B, C, N] at ``sample_rate`` (default the model's): [B, 1, N'] at the model's rate."""
        return melody_stems(self.demucs, wav.to(self.device), sample_rate or self.sample_rate, shift,
                            self.sample_rate)

    def _fit_length(self, chroma: torch.Tensor) -> torch.Tensor:
        """Tile or cut to ``chroma_len`` frames (``match_len_on_eval``)."""
        frames = chroma.shape[1]
        if frames < self.chroma_len:
            chroma = chroma.repeat(1, math.ceil(self.chroma_len / frames), 1)
        return chroma[:, : self.chroma_len]

    @torch.no_grad()
    def chroma(self, wav: torch.Tensor, shift: int | Sequence[int]) -> torch.Tensor:
        """[B, C, N] melody at the model's rate (``melody_to_model``) → [B, chroma_len, n_chroma]. Channels are mixed
        down first (audiocraft's conditioner collate); a one-sample wave skips demucs (a null melody)."""
        wav = wav.to(self.device).float().mean(-2, keepdim=True)
        if wav.shape[-1] > 1:
            wav = self.stems(wav, shift)
        return self._fit_length(self.extractor(wav))

    @torch.no_grad()
    def null_chroma(self, batch: int = 1) -> torch.Tensor:
        """What a melody model is conditioned on without a melody: the chroma of a (1, 1, 1) zero wave, tiled."""
        zero = torch.zeros((1, 1, 1), device=self.device)
        return self._fit_length(self.extractor(zero)).expand(batch, -1, -1)

    def forward(self, chroma: torch.Tensor) -> torch.Tensor:
        """[B, chroma_len, n_chroma] → [B, chroma_len, dim] (all frames valid: no mask)."""
        return self.output_proj(chroma.to(self.output_proj.weight))


def melody_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The ``chroma_stem`` arguments of xp.cfg's ``self_wav`` conditioner, or None for a model without melody."""
    cond = (cfg.get("conditioners") or {}).get("self_wav")
    if cond is None:
        return None
    if cond.get("model") != "chroma_stem":
        raise CheckpointError(f"xp.cfg conditioners.self_wav.model={cond.get('model')!r} is not supported "
                              "(only 'chroma_stem', MusicGen-melody's)")
    return dict(cond.get("chroma_stem") or {})


def from_release(cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], release_dir: Path | None,
                 device: torch.device | str = "cpu") -> MelodyConditioner:
    """The melody conditioner of a release: xp.cfg (``parse_cfg``) and its LM state dict (``best_state``); demucs from
    ``release_dir/demucs`` when that folder exists, else from the hub (on first use)."""
    args = melody_config(cfg)
    if args is None:
        raise CheckpointError("xp.cfg has no conditioners.self_wav: not a melody model")
    if args.get("eval_wavs"):
        raise CheckpointError("xp.cfg conditioners.self_wav.chroma_stem.eval_wavs is set: such a model conditions "
                              "on a dataset's waves instead of the user's melody, which soundry does not do")
    # match_len_on_eval is forced on, as MusicGen.get_pretrained does for every melody release; cache_path and
    # n_eval_wavs only matter in training.
    known = {"sample_rate", "n_chroma", "radix2_exp", "argmax", "nfft", "winlen", "winhop", "norm",
             "match_len_on_eval", "eval_wavs", "n_eval_wavs", "cache_path"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise CheckpointError(f"xp.cfg conditioners.self_wav.chroma_stem.{unknown[0]} is not supported")
    extractor_kwargs = {k: args[k] for k in ("argmax", "nfft", "winlen", "winhop", "norm") if k in args}
    weight = state_dict[SELF_WAV_PREFIX + "output_proj.weight"]
    demucs_dir = Path(release_dir) / "demucs" if release_dir is not None else None
    cond = MelodyConditioner(weight.shape[0], sample_rate=int(args["sample_rate"]), n_chroma=int(args["n_chroma"]),
                             radix2_exp=int(args["radix2_exp"]), duration=float(cfg["dataset"]["segment_duration"]),
                             demucs_dir=demucs_dir if demucs_dir is not None and demucs_dir.is_dir() else None,
                             **extractor_kwargs)
    if weight.shape[1] != cond.extractor.n_chroma:
        raise CheckpointError(f"{SELF_WAV_PREFIX}output_proj.weight is {list(weight.shape)}, expected "
                              f"[dim, {cond.extractor.n_chroma}] (n_chroma)")
    cond.output_proj.load_state_dict({"weight": weight.float(),
                                      "bias": state_dict[SELF_WAV_PREFIX + "output_proj.bias"].float()})
    return cond.eval().to(device)
