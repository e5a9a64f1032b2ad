"""The Stable Audio family (Stable Audio Open 1.0, Stable Audio 3): diffusers-layout loading, the model object, and
the catalog of named releases."""

from soundry.models.stable_audio.catalog import CATALOG, StableAudioEntry, entry
from soundry.models.stable_audio.loader import is_diffusers_dir
from soundry.models.stable_audio.model import Condition, StableAudioModel, load_stable_audio


def load_folder(name_or_path: str, folder, device, precision: str) -> StableAudioModel:
    """``soundry.models.load_model``'s entry for a diffusers folder (fp32, bf16 or fp16)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision {precision} is not available for Stable Audio models (fp32, bf16, fp16)")
    from pathlib import Path

    name = Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path
    model = load_stable_audio(folder, name=name, device=device, entry=entry(name_or_path), dtype=dtypes[precision])
    model.precision = precision
    return model


__all__ = ["CATALOG", "Condition", "StableAudioEntry", "StableAudioModel", "entry",
           "is_diffusers_dir", "load_folder", "load_stable_audio"]
