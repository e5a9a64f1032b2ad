"""Where a model's files are on this machine: a folder given as a path, a name pointed at a folder or a hub
reference (``SOUNDRY_MODEL_PATHS="audiogen=/dir,musicgen=hf:owner/repo@rev"`` or an added model's source), else
the Hugging Face hub's cache (downloading on first use).

A folder holds an audiocraft release (``state_dict.bin`` and ``compression_state_dict.bin``, optionally ``t5/``,
``encodec/``, ``demucs/`` which replace the hub names of those components), a transformers-format MusicGen
(``config.json`` + safetensors, ``soundry.models.audiocraft.formats.transformers``), a diffusers pipeline
(``model_index.json``: Stable Audio) or Stability's own layout (``model_config.json`` + ``model.safetensors``), which
``check_model_dir`` converts once into a diffusers folder (``soundry.models.stable_audio.convert``) and answers
that folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from soundry.models import catalog
from soundry.models.catalog import ALIASES, ModelSpec
from soundry.models.errors import ModelNotAvailable


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

    Order: an existing directory path; a hub reference ``hf:owner/repo@revision``; SOUNDRY_MODEL_PATHS (or an added
    model's source); the Hugging Face hub (cache first).
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        return check_model_dir(as_path, download)
    if str(name_or_path).startswith("hf:"):  # a hub reference itself, hf:owner/repo@revision
        from soundry.models.sources.hub import fetch

        return check_model_dir(fetch(str(name_or_path), download=download), download)
    local = local_dir_for(name_or_path)
    spec = catalog.active().find(name_or_path)
    if local is None and spec is not None and spec.source:  # registered with a source (soundry models add)
        local = Path(spec.source)
    if local is not None and str(local).startswith("hf:"):  # a hub reference, hf:owner/repo@revision
        from soundry.models.sources.hub import fetch

        return check_model_dir(fetch(str(local), download=download), download)
    if local is not None:
        if not local.is_dir():
            raise ModelNotAvailable(f"SOUNDRY_MODEL_PATHS points {name_or_path} at {local}, which is not a directory")
        return check_model_dir(local, download)
    if spec is None:
        raise ModelNotAvailable(f"{name_or_path!r} is neither a model directory nor a known model name "
                                f"({', '.join(catalog.active().names())})")
    if spec.kind == "diffusion":  # a Stable Audio release: its diffusers folder (or Stability's layout, converted)
        from soundry.models.sources.hub import fetch

        try:
            return check_model_dir(fetch("hf:" + spec.hub_repo, download=download), download)
        except ModelNotAvailable as exc:
            if download or "not in the local cache" not in str(exc):
                raise
            gated = "; the repository is gated: accept its licence on the hub and set HF_TOKEN" if spec.gated else ""
            raise ModelNotAvailable(f"weights for {spec.name} ({spec.hub_repo}) are not in the local cache (soundry "
                                    f"models pull {spec.name} fetches them{gated}; or set "
                                    f"SOUNDRY_MODEL_PATHS={spec.name}=/path/to/a/diffusers/folder)") from None
    return _from_hub(spec, download)


def check_model_dir(path: Path, download: bool = True) -> Path:
    """The folder soundry loads for ``path``: a diffusers pipeline as it is, Stability's layout converted (once,
    into ``convert.converted_dir_for(path)``), else an audiocraft / transformers folder (``check_release_dir``)."""
    from soundry.models.errors import CheckpointError
    from soundry.models.stable_audio.convert import is_stability_dir
    from soundry.models.stable_audio.loader import is_diffusers_dir

    if is_diffusers_dir(path):
        return path
    if is_stability_dir(path):
        try:
            return converted(path, download)
        except CheckpointError as exc:
            raise ModelNotAvailable(str(exc)) from exc
    return check_release_dir(path)


def converted(path: Path, download: bool = True) -> Path:
    """The diffusers folder a Stability-layout folder converts into, converted now when it is not yet. Its T5
    encoder and tokenizer: the folder's own ``text_encoder/`` and ``tokenizer/`` when it has them, else the hub
    repository ``model_config.json``'s ``t5_model_name`` names (Stable Audio 3: the T5Gemma conditioner's
    ``model_path`` / ``repo_id`` / ``model_name``, default google/t5gemma-b-b-ul2, and in it the conditioner's
    ``subfolder``, which is read from beside the checkpoint when the folder has it, as Stability's releases do),
    fetched like a model, safetensors only."""
    from soundry.models.stable_audio import convert

    dst = convert.converted_dir_for(path)
    if convert.is_converted(dst):
        return dst
    cfg = convert.read_config(path)  # refuses what is not mapped before anything is fetched
    text_encoder = tokenizer = None
    if not ((path / "text_encoder").is_dir() and (path / "tokenizer").is_dir()):
        from soundry.models.sources.hub import fetch

        sub = convert.sa3_text_subfolder(cfg) if convert.is_sa3_config(cfg) else None
        if sub and (path / sub / "config.json").is_file():  # the release's own T5Gemma, beside its checkpoint
            text_encoder = tokenizer = path / sub
        else:
            if convert.is_sa3_config(cfg):  # Stable Audio 3: the T5Gemma (tokenizer, config, frozen weights)
                repo = convert.sa3_text_repo(cfg)
            else:
                name = next(c.get("config", {}).get("t5_model_name", "t5-base")
                            for c in cfg["model"]["conditioning"]["configs"] if c.get("id") == "prompt")
                repo = convert.T5_REPOS.get(name, name)
            text_encoder = tokenizer = fetch(f"hf:{repo}", download=download) / (sub or "")
    return convert.convert_stability_dir(path, dst, text_encoder, tokenizer)


def check_release_dir(path: Path) -> Path:
    from soundry.models.audiocraft.formats.transformers import is_transformers_dir

    if is_transformers_dir(path):  # transformers format (formats.transformers checks the rest at load)
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
    """An audiocraft release from the hub's cache, downloaded (staged: nothing half-downloaded stays in the cache
    when it fails, ``hub.staged_download``) when it is not there yet."""
    from huggingface_hub import snapshot_download

    from soundry.models.sources.hub import HubRef, staged_download

    files = ["state_dict.bin", "compression_state_dict.bin"]
    try:
        return Path(snapshot_download(spec.hub_repo, allow_patterns=files, local_files_only=True))
    except Exception:  # not cached yet
        if not download:
            raise ModelNotAvailable(f"weights for {spec.name} ({spec.hub_repo}) are not in the local cache") from None
    try:
        return staged_download(HubRef(spec.hub_repo), files)
    except ModelNotAvailable as exc:
        raise ModelNotAvailable(f"weights for {spec.name} not found locally: {exc}; or set "
                                f"SOUNDRY_MODEL_PATHS={spec.name.split('-')[0]}=/path/to/release/dir") from exc
