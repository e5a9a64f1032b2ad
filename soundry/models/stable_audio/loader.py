"""Load a Stable Audio pipeline folder in diffusers' layout (``model_index.json`` + one folder per component).

Only the classes named here are built, each by its own library's ``from_pretrained`` (diffusers' and transformers'
modules: soundry does not re-implement the networks), from safetensors only and offline. A folder that names any
other class, carries pickled weights (``.bin``, ``.pt``, ...) or Python files, or whose configs ask for custom code
(``auto_map``) is refused before anything is built: no code from a model repository runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from soundry.models.errors import CheckpointError

# pipeline class -> its kind and, per component, the (library, class) pairs accepted
PIPELINES = {
    "StableAudioPipeline": ("sao", {
        "transformer": {"StableAudioDiTModel"}, "vae": {"AutoencoderOobleck"},
        "projection_model": {"StableAudioProjectionModel"}, "text_encoder": {"T5EncoderModel"},
        "tokenizer": {"T5Tokenizer", "T5TokenizerFast"}, "scheduler": {"CosineDPMSolverMultistepScheduler"}}),
    "StableAudio3Pipeline": ("sa3", {
        "transformer": {"StableAudio3DiTModel"}, "vae": {"AutoencoderSAME"},
        "duration_embedder": {"StableAudio3DurationEmbedder"}, "text_encoder": {"T5GemmaEncoderModel"},
        "tokenizer": {"GemmaTokenizer", "GemmaTokenizerFast"}, "scheduler": {"FlowMatchEulerDiscreteScheduler"}}),
}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".py", ".pyc"}


def is_diffusers_dir(path: Path | str) -> bool:
    """A folder in diffusers' pipeline layout."""
    return (Path(path) / "model_index.json").is_file()


def read_index(folder: Path) -> tuple[str, str, dict[str, str]]:
    """(pipeline class, kind, {component: class}) after checking every component against ``PIPELINES``."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}/model_index.json cannot be read ({exc})") from exc
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise CheckpointError(f"{folder}: pipeline {pipeline!r} is not a Stable Audio pipeline soundry runs "
                              f"({', '.join(PIPELINES)})")
    kind, allowed = PIPELINES[pipeline]
    classes = {}
    for part, accepted in allowed.items():
        spec = index.get(part)
        if not isinstance(spec, list) or len(spec) != 2 or spec[1] not in accepted:
            raise CheckpointError(f"{folder}: component {part!r} is {spec!r}; soundry builds only "
                                  f"{' or '.join(sorted(accepted))} there")
        classes[part] = spec[1]
    extra = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None
             and k not in allowed]
    if extra:
        raise CheckpointError(f"{folder}: unexpected components {extra} for {pipeline}")
    return pipeline, kind, classes


def check_files(folder: Path, parts: list[str]) -> None:
    """Refuse pickles, code and ``auto_map`` configs in the components soundry loads."""
    for part in parts:
        sub = folder / part
        if not sub.is_dir():
            raise CheckpointError(f"{folder}: the {part!r} folder is missing")
        for f in sub.rglob("*"):
            if f.suffix.lower() in PICKLE_SUFFIXES:
                raise CheckpointError(f"{f}: soundry loads safetensors weights only and runs no code from a model "
                                      f"folder; remove {f.name} (or convert it to safetensors)")
            if f.suffix == ".json" and f.name != "tokenizer.json" and "auto_map" in _json_keys(f):
                raise CheckpointError(f"{f} asks for custom code (auto_map); soundry never runs a repository's code")
        if part not in ("tokenizer", "scheduler") and not any(sub.glob("*.safetensors")):
            raise CheckpointError(f"{sub}: no .safetensors weights")


def _json_keys(path: Path) -> set[str]:
    """A config's top-level keys (none for a file that is not a JSON object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON ({exc})") from exc
    return set(data) if isinstance(data, dict) else set()


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _transformers_class(name: str):
    import transformers

    return getattr(transformers, name)


def load_components(folder: Path, precision: str = "fp32") -> tuple[str, dict]:
    """(kind, {component: built module / tokenizer / scheduler config dict}) from a checked folder; the DiT in
    ``precision``'s dtype, the other networks in float32 (``soundry.models.stable_audio.precision``)."""
    from soundry.models.stable_audio.precision import part_dtype

    _pipeline, kind, classes = read_index(folder)
    check_files(folder, list(classes))
    parts: dict = {}
    for part, cls_name in classes.items():
        sub = folder / part
        if part == "scheduler":
            parts[part] = json.loads((sub / "scheduler_config.json").read_text())
        elif part == "tokenizer":
            parts[part] = _transformers_class(cls_name).from_pretrained(str(sub), local_files_only=True)
        elif part == "text_encoder":
            parts[part] = _transformers_class(cls_name).from_pretrained(
                str(sub), local_files_only=True, use_safetensors=True, dtype=part_dtype(part, precision)).eval()
        else:
            parts[part] = _diffusers_class(cls_name).from_pretrained(
                str(sub), local_files_only=True, use_safetensors=True, torch_dtype=part_dtype(part, precision)).eval()
    return kind, parts


def folder_facts(folder: Path) -> dict:
    """What a diffusers folder says of the model without building it (``soundry models add`` records these):
    family, channels, sample rate, the longest clip (SAO: the DiT's window and the seconds range; SA3: the duration
    embedding's range), default steps and guidance as the loaded model uses them (``StableAudioModel``: SAO 100 steps
    at 7.0; SA3 8 steps when its scheduler re-noises, i.e. distilled, else 100, and no guidance)."""
    _pipeline, kind, _classes = read_index(folder)

    def cfg(part: str, name: str = "config.json") -> dict:
        try:
            return json.loads((folder / part / name).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder}/{part}/{name} cannot be read ({exc})") from exc

    vae = cfg("vae")
    rate, channels = int(vae["sampling_rate"]), int(vae["audio_channels"])
    if kind == "sao":
        hop = 1
        for r in vae["downsampling_ratios"]:
            hop *= int(r)
        window = int(cfg("transformer")["sample_size"]) * hop / rate
        most = min(window, float(cfg("projection_model").get("max_value", window)))
        steps, guidance = 100, 7.0
    else:
        most = float(cfg("duration_embedder").get("max_val", 0))
        distilled = bool(cfg("scheduler", "scheduler_config.json").get("stochastic_sampling"))
        steps, guidance = (8 if distilled else 100), 1.0
    return {"family": "stable-audio-open" if kind == "sao" else "stable-audio-3", "channels": channels,
            "sample_rate": rate, "max_seconds": most, "steps": steps, "guidance": guidance}
