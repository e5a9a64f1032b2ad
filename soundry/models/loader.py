"""``load_model``: a catalog name or a folder → a loaded model, its checkpoint format detected from its files
(``audiocraft.formats``: the release layout, transformers' layout with an optional LoRA adapter)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from soundry.models import catalog
from soundry.models.audiocraft.conditioners.text import DEFAULT_MAX_TOKENS
from soundry.models.audiocraft.formats.release import load_release_model
from soundry.models.audiocraft.formats.transformers import is_transformers_dir, load_transformers_model
from soundry.models.audiocraft.lm.precision import DTYPES, resolve_precision
from soundry.models.audiocraft.model import AudioModel
from soundry.models.errors import CheckpointError, ModelNotAvailable
from soundry.models.sources.paths import resolve_model_dir

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_LOAD_LOCK = threading.Lock()


def load_model(name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None,
               quantize: str | None = None, precision: str | None = None,
               max_text_tokens: int | None = None, packed: bool | str = True, fused_heads: bool = False) -> AudioModel:
    """Load a model by registry name (``audiogen``, ``musicgen-small``, ...) or release directory.

    ``precision`` (``auto | fp32 | bf16 | fp16 | int8``, see ``soundry.models.audiocraft.lm.precision``) sets how
    the LM runs; ``auto`` (the default) is bfloat16 on CUDA and float32 on the CPU. The older
    ``dtype`` and ``quantize="int8"`` arguments still work when ``precision`` is not given.
    A precision the device cannot run raises ``PrecisionError`` here, at load.
    Loads are serialised within a process: transformers' ``from_pretrained`` switches process-wide
    state (the default device for meta-initialisation), so two loads at once can corrupt each other.
    ``max_text_tokens`` bounds the tokens the text encoder sees per prompt (longer ones are truncated).
    ``packed`` (CPU) picks the LM's linear kernel: True/``"auto"`` soundry's few-row kernel in fp32 where it
    builds, else oneDNN's packed layout; ``"onednn"``; False plain ``nn.Linear``
    (``soundry.models.audiocraft.lm.precision.apply_precision``).
    ``fused_heads`` computes the K output heads as one matmul (``TransformerLM.fuse_heads_``; release
    checkpoints only).
    """
    with _LOAD_LOCK:
        return _load_model(name_or_path, device, dtype, quantize, precision, max_text_tokens or DEFAULT_MAX_TOKENS,
                           packed, fused_heads)


def _legacy_precision(dtype: torch.dtype | None, quantize: str | None) -> str | None:
    if quantize:
        return quantize
    return None if dtype is None else {v: k for k, v in DTYPES.items()}[dtype]


def _load_model(name_or_path: str, device: str | None, dtype: torch.dtype | None,
                quantize: str | None, precision: str | None, max_text_tokens: int, packed: bool | str,
                fused_heads: bool = False) -> AudioModel:
    dev = pick_device(device)
    precision = resolve_precision(precision or _legacy_precision(dtype, quantize), dev)
    from soundry.models.stable_audio import is_diffusers_dir, load_folder

    release_dir = resolve_model_dir(name_or_path)  # a Stability-layout folder comes back converted
    if is_diffusers_dir(release_dir):  # the diffusion family (Stable Audio)
        return load_folder(name_or_path, release_dir, dev, precision)
    spec = catalog.active().find(name_or_path)
    if is_transformers_dir(release_dir) or (spec is not None and spec.adapter):
        return _load_transformers(name_or_path, release_dir, spec, dev, precision, max_text_tokens, packed)
    family = spec.family if spec is not None else None
    model = load_release_model(release_dir, _display_name(name_or_path), family, dev, precision, max_text_tokens,
                               packed, fused_heads)
    log.info("loaded %s from %s on %s (%s)", model.name, release_dir, dev, precision)
    return model


def _load_transformers(name_or_path: str, model_dir: Path, spec, dev: torch.device, precision: str,
                       max_text_tokens: int, packed: bool | str) -> AudioModel:
    """A transformers-format checkpoint (``formats.transformers``), with its LoRA adapter if registered."""
    adapter_dir = None
    if spec is not None and spec.adapter:
        if not is_transformers_dir(model_dir):
            raise CheckpointError(f"{spec.name}: a LoRA adapter is merged into a transformers-format base; "
                                  f"{model_dir} is in audiocraft's release format")
        from soundry.models.sources.hub import fetch

        adapter_dir = fetch(spec.adapter, download=True, kind="adapter")
    family = spec.family if spec is not None else "musicgen"
    model = load_transformers_model(model_dir, _display_name(name_or_path), family, dev, precision, max_text_tokens,
                                    packed, adapter_dir)
    model.format, model.adapter = "transformers", adapter_dir
    return model


def _display_name(name_or_path: str) -> str:
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


__all__ = ["load_model", "ModelNotAvailable", "pick_device"]
