"""Model names → where their weights live (local directory or Hugging Face hub repo).

A model directory has the audiocraft release layout: ``state_dict.bin`` and
``compression_state_dict.bin``. A local directory may also carry ``t5/`` (the text encoder)
and ``encodec/`` (the codec named by ``{"pretrained": ...}``), which then replace the hub names.
``SOUNDRY_MODEL_PATHS="audiogen=/dir,musicgen=/dir2"`` points names at local directories (or at
``hf:owner/repo@revision``). A directory may instead hold a transformers-format MusicGen (``config.json`` +
safetensors, ``soundry.models.hf_format``). Models added by the operator are ``register``-ed at start
(``soundry.models.user_models``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Each family's generation window: its context (max_duration, seconds) and the stride of windows
# beyond it (extend_stride), as audiocraft's AudioGen and MusicGen set them.
FAMILY_WINDOWS = {"audiogen": (10.0, 2.0), "musicgen": (30.0, 18.0)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_repo: str
    family: str  # "audiogen" | "musicgen"
    description: str
    channels: int = 1
    # a model named by the operator (``soundry models add``, soundry.toml's model_paths): where its weights
    # are ("hf:owner/repo@revision" or a folder, either format) and an optional LoRA adapter (same forms)
    source: str = ""
    adapter: str = ""
    melody: bool = False  # conditioned on a tune as well as the text (MusicGen-melody's chroma)


_SPECS = [
    ModelSpec("audiogen-medium", "facebook/audiogen-medium", "audiogen", "AudioGen 1.5B: sound effects, 16 kHz"),
    ModelSpec("musicgen-small", "facebook/musicgen-small", "musicgen", "MusicGen 300M: music, 32 kHz"),
    ModelSpec("musicgen-medium", "facebook/musicgen-medium", "musicgen", "MusicGen 1.5B: music, 32 kHz"),
    ModelSpec("musicgen-large", "facebook/musicgen-large", "musicgen", "MusicGen 3.3B: music, 32 kHz"),
    ModelSpec("musicgen-stereo-small", "facebook/musicgen-stereo-small", "musicgen",
              "MusicGen 300M stereo: music, 32 kHz, 2 channels", 2),
    ModelSpec("musicgen-stereo-medium", "facebook/musicgen-stereo-medium", "musicgen",
              "MusicGen 1.5B stereo: music, 32 kHz, 2 channels", 2),
    ModelSpec("musicgen-stereo-large", "facebook/musicgen-stereo-large", "musicgen",
              "MusicGen 3.3B stereo: music, 32 kHz, 2 channels", 2),
    ModelSpec("musicgen-melody", "facebook/musicgen-melody", "musicgen",
              "MusicGen 1.5B melody: music that follows a given tune, 32 kHz", melody=True),
    ModelSpec("musicgen-melody-large", "facebook/musicgen-melody-large", "musicgen",
              "MusicGen 3.3B melody: music that follows a given tune, 32 kHz", melody=True),
    ModelSpec("musicgen-stereo-melody", "facebook/musicgen-stereo-melody", "musicgen",
              "MusicGen 1.5B stereo melody: music that follows a given tune, 32 kHz, 2 channels", 2, melody=True),
    ModelSpec("musicgen-stereo-melody-large", "facebook/musicgen-stereo-melody-large", "musicgen",
              "MusicGen 3.3B stereo melody: music that follows a given tune, 32 kHz, 2 channels", 2, melody=True),
]
ALIASES = {"audiogen": "audiogen-medium", "musicgen": "musicgen-small",
           "musicgen-stereo": "musicgen-stereo-small"}
SPECS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
MODEL_NAMES: list[str] = list(ALIASES) + list(SPECS)

# Hub names of text encoders / codecs that a local directory's subfolders replace.
LOCAL_COMPONENTS = {"t5": "t5", "encodec": "encodec", "demucs": "demucs"}


class ModelNotAvailable(RuntimeError):
    """The model's weights cannot be found locally nor downloaded."""


def register(spec: ModelSpec) -> None:
    """Add (or replace) a model: every API accepts its name from then on (MODEL_NAMES and SPECS are
    updated in place, so the modules that imported them see it)."""
    SPECS[spec.name] = spec
    if spec.name not in MODEL_NAMES:
        MODEL_NAMES.append(spec.name)


def canonical_name(name: str) -> str:
    """'audiogen' → 'audiogen-medium'; raises KeyError naming the known models."""
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name not in SPECS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return name


def model_family(name: str) -> str:
    return SPECS[canonical_name(name)].family


def local_model_paths(env: str | None = None) -> dict[str, Path]:
    """Parse SOUNDRY_MODEL_PATHS ("name=/dir,name2=/dir2"); keys are the names as written."""
    raw = os.environ.get("SOUNDRY_MODEL_PATHS", "") if env is None else env
    out: dict[str, Path] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        if "=" not in part:
            raise ValueError(f"SOUNDRY_MODEL_PATHS entry {part!r} must look like name=/path")
        key, value = part.split("=", 1)
        out[key.strip().lower()] = Path(value.strip()).expanduser()
    return out


def local_dir_for(name: str) -> Path | None:
    """The local directory configured for a name or its canonical name, if any."""
    paths = local_model_paths()
    key = name.strip().lower()
    for candidate in (key, ALIASES.get(key, key)):
        if candidate in paths:
            return paths[candidate]
    for alias, target in ALIASES.items():  # "audiogen=/dir" also serves "audiogen-medium"
        if target == key and alias in paths:
            return paths[alias]
    return None


def resolve_model_dir(name_or_path: str, download: bool = True) -> Path:
    """A directory holding the release files for a model name or a path.

    Order: an existing directory path; SOUNDRY_MODEL_PATHS; the Hugging Face hub (cache first).
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        return _check_release_dir(as_path)
    local = local_dir_for(name_or_path)
    spec = SPECS.get(ALIASES.get(name_or_path.strip().lower(), name_or_path.strip().lower()))
    if local is None and spec is not None and spec.source:  # registered with a source (soundry models add)
        local = Path(spec.source)
    if local is not None and str(local).startswith("hf:"):  # a hub reference, hf:owner/repo@revision
        from soundry.models.sources import fetch

        return _check_release_dir(fetch(str(local), download=download))
    if local is not None:
        if not local.is_dir():
            raise ModelNotAvailable(f"SOUNDRY_MODEL_PATHS points {name_or_path} at {local}, which is not a directory")
        return _check_release_dir(local)
    try:
        spec = SPECS[canonical_name(name_or_path)]
    except KeyError as exc:
        raise ModelNotAvailable(f"{name_or_path!r} is neither a model directory nor a known model name "
                                f"({', '.join(MODEL_NAMES)})") from exc
    return _from_hub(spec, download)


def _check_release_dir(path: Path) -> Path:
    from soundry.models.hf_format import is_transformers_dir

    if is_transformers_dir(path):  # transformers format (soundry.models.hf_format checks the rest at load)
        return path
    missing = [f for f in ("state_dict.bin", "compression_state_dict.bin") if not (path / f).is_file()]
    if missing and (path / "config.json").is_file():
        raise ModelNotAvailable(f"model directory {path} has a config.json that names no MusicGen model and lacks "
                                f"{', '.join(missing)}: it is in neither format soundry serves (audiocraft release, "
                                "transformers MusicgenForConditionalGeneration)")
    if missing:
        raise ModelNotAvailable(f"model directory {path} lacks {', '.join(missing)} (audiocraft release layout) "
                                "and config.json (transformers layout)")
    return path


def _from_hub(spec: ModelSpec, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    files = ["state_dict.bin", "compression_state_dict.bin"]
    try:
        return Path(snapshot_download(spec.hub_repo, allow_patterns=files, local_files_only=True))
    except Exception:  # not cached yet
        if not download:
            raise ModelNotAvailable(f"weights for {spec.name} ({spec.hub_repo}) are not in the local cache") from None
    try:
        return Path(snapshot_download(spec.hub_repo, allow_patterns=files))
    except Exception as exc:
        raise ModelNotAvailable(
            f"weights for {spec.name} not found locally and the hub is unreachable ({type(exc).__name__}); "
            f"set SOUNDRY_MODEL_PATHS={spec.name.split('-')[0]}=/path/to/release/dir") from exc


def resolve_component(release_dir: Path, component: str, hub_name: str) -> str:
    """Local subfolder (``t5/``, ``encodec/``) of a release dir if present, else the hub name."""
    sub = release_dir / LOCAL_COMPONENTS[component]
    return str(sub) if sub.is_dir() else hub_name
