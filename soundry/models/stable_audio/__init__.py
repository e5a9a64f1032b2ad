"""The Stable Audio family (Stable Audio Open 1.0, Stable Audio 3): diffusers-layout loading, the model object, and
the catalog of named releases."""

from soundry.models.stable_audio.catalog import CATALOG, StableAudioEntry, entry
from soundry.models.stable_audio.loader import is_diffusers_dir
from soundry.models.stable_audio.model import Condition, StableAudioModel, load_stable_audio


def load_folder(name_or_path: str, folder, device, precision: str) -> StableAudioModel:
    """``soundry.models.load_model``'s entry for a diffusers folder, with the resolved precision setting (the DiT in
    fp32, bf16 or fp16; int8 runs this family in fp32: ``soundry.models.stable_audio.precision``)."""
    from pathlib import Path

    from soundry.models.stable_audio.precision import family_precision

    name = Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path
    return load_stable_audio(folder, name=name, device=device, entry=entry(name_or_path),
                             precision=family_precision(precision, name))


__all__ = ["CATALOG", "Condition", "StableAudioEntry", "StableAudioModel", "entry",
           "is_diffusers_dir", "load_folder", "load_stable_audio"]
