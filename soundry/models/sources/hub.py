"""Where a model's files come from: a local folder, or a Hugging Face hub reference ``hf:owner/repo@revision``.

A hub reference is fetched with ``huggingface_hub`` into its cache (progress bars on stderr), only the files
the detected format needs: the audiocraft release files, a transformers-format checkpoint's config,
safetensors, tokenizer and card, a PEFT adapter's two files, a diffusers pipeline's ``model_index.json`` and, per
component folder, its config and safetensors weights (shards and their index), tokenizer files and scheduler
config, or Stability's own layout (``model_config.json`` + ``model.safetensors``, converted to diffusers' layout by
``soundry.models.stable_audio.convert`` once here). Pickles (``*.bin``, ``*.ckpt``, ``*.pt``) and Python files are
never fetched. Once cached it loads offline. ``pin`` turns a branch or tag into the commit it names, so what a model
list reports is what runs.

A download goes to a staging cache beside the real one and is published into it (blobs, then the snapshot, then
the ref) only once ``snapshot_download`` returned: a failed or interrupted download leaves nothing of itself in
the cache, and the next call downloads again. A gated repository whose licence the token's account has not
accepted (or no token) answers one sentence naming the repository, its licence and ``HF_TOKEN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from soundry.models.errors import ModelNotAvailable

HUB = "hf:"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
AUDIOCRAFT_FILES = ["state_dict.bin", "compression_state_dict.bin"]
TRANSFORMERS_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "spiece.model",
                      "tokenizer.model", "special_tokens_map.json",
                      "preprocessor_config.json"]  # the last: a melody model's chroma; tokenizer.model: T5Gemma's
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
CARD = ["README.md"]
# Stability's own layout (stable-audio-tools): converted to diffusers' by soundry.models.stable_audio.convert
STABILITY_FILES = ["model_config.json", "model.safetensors"]
LICENCE_FILES = ["LICENSE.md", "LICENSE"]
# diffusers' layout: the pipeline index, then per component folder only these names (no variants, no pickles)
DIFFUSERS_INDEX = "model_index.json"
DIFFUSERS_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "projection_model",
                        "duration_embedder")
_WEIGHT_NAME = re.compile(r"^(diffusion_pytorch_model|model)(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")
_COMPONENT_FILES = {"config.json", "scheduler_config.json", "tokenizer.json", "tokenizer_config.json", "spiece.model",
                    "tokenizer.model", "special_tokens_map.json", "added_tokens.json"}
_PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub(source: str) -> bool:
    return str(source).startswith(HUB)


def parse_hub(source: str) -> HubRef:
    """``hf:owner/repo`` or ``hf:owner/repo@revision`` (a branch, tag or commit)."""
    repo, _, revision = str(source)[len(HUB):].partition("@")
    if not _REPO.match(repo) or (revision == "" and "@" in source):
        raise ValueError(f"{source!r} is not a hub reference such as hf:owner/repo@revision")
    return HubRef(repo, revision or None)


def gated_sentence(repo: str) -> str:
    """What to do about a gated repository: its licence (the catalog's, for a built-in release) and HF_TOKEN."""
    from soundry.models.catalog import BUILTINS

    licence = next((s.licence for s in BUILTINS if s.hub_repo == repo and s.licence), None)
    terms = f"the {licence}" if licence else "its licence"
    return (f"{repo} is gated: accept {terms} at https://huggingface.co/{repo} and set HF_TOKEN to a token of "
            "that account")


def _hub_error(ref: HubRef, exc: Exception) -> ModelNotAvailable:
    """One sentence naming why a hub request failed."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return ModelNotAvailable(gated_sentence(ref.repo))
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotAvailable(f"{ref}: no such repository on the Hugging Face hub (a private one needs HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotAvailable(f"{ref}: the repository has no revision {ref.revision!r}")
    return ModelNotAvailable(f"cannot reach the Hugging Face hub for {ref} ({type(exc).__name__}); once its files "
                             "are in the local cache it loads offline, or give a local folder instead")


def pin(source: str) -> str:
    """A hub reference with its revision resolved to a commit (a local folder: its absolute path)."""
    if not is_hub(source):
        return str(Path(source).expanduser().resolve())
    ref = parse_hub(source)
    if ref.revision and _COMMIT.match(ref.revision):
        return str(ref)
    from huggingface_hub import HfApi

    try:
        sha = HfApi().model_info(ref.repo, revision=ref.revision).sha
    except Exception as exc:
        raise _hub_error(ref, exc) from exc
    return str(HubRef(ref.repo, sha))


def patterns_for(files: list[str], ref: HubRef | str, kind: str = "model") -> list[str]:
    """The files to download from a repository listing ``files``, by the layout they show; refuses a layout
    soundry does not serve with a sentence."""
    names = set(files)
    if kind == "adapter":
        if "adapter_config.json" not in names:
            raise ModelNotAvailable(f"{ref} has no adapter_config.json: not a PEFT adapter")
        if "adapter_model.safetensors" not in names:
            raise ModelNotAvailable(f"{ref} has no adapter_model.safetensors: soundry reads adapters from "
                                    "safetensors only (a .bin file is a pickle that can run code)")
        return ADAPTER_FILES + CARD
    if DIFFUSERS_INDEX in names:
        return diffusers_files(files, ref)
    if STABILITY_FILES[0] in names:
        if STABILITY_FILES[1] not in names:
            pickled = sorted(f for f in names if "/" not in f and f.endswith(_PICKLED))
            raise ModelNotAvailable(f"{ref} has model_config.json but no model.safetensors"
                                    + (f" (only {', '.join(pickled)}: a pickle that can run code, which soundry "
                                       "never reads)" if pickled else ""))
        return STABILITY_FILES + CARD + [f for f in LICENCE_FILES if f in names]
    if all(f in names for f in AUDIOCRAFT_FILES):
        return AUDIOCRAFT_FILES + CARD
    if "config.json" in names:
        if "model.safetensors" in names or "model.safetensors.index.json" in names:
            return TRANSFORMERS_FILES + CARD
        if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in names):
            raise ModelNotAvailable(f"{ref} has its weights only as pytorch_model.bin: soundry reads "
                                    "transformers-format weights from safetensors only (a .bin file is a pickle "
                                    "that can run code)")
        raise ModelNotAvailable(f"{ref} has config.json but no model.safetensors")
    if "adapter_config.json" in names:
        raise ModelNotAvailable(f"{ref} is an adapter: give a base model as the source and this one with --adapter")
    raise ModelNotAvailable(f"{ref} holds no layout soundry serves: an audiocraft release (state_dict.bin), a "
                            "transformers-format MusicGen (config.json + model.safetensors), a diffusers pipeline "
                            "(model_index.json) or Stability's layout (model_config.json + model.safetensors)")


def diffusers_files(files: list[str], ref: HubRef | str) -> list[str]:
    """The files of a diffusers pipeline the loader reads (exact names): ``model_index.json``, the card and
    licence, and in each component folder its config, plain safetensors weights (shards and index), tokenizer
    files, scheduler config. Refuses a weight component whose weights are pickles only."""
    wanted = [DIFFUSERS_INDEX] + [f for f in CARD + LICENCE_FILES if f in files]
    for part in DIFFUSERS_COMPONENTS:
        inside = [f for f in files if f.startswith(part + "/") and f.count("/") == 1]
        if not inside:
            continue
        names = [f.split("/", 1)[1] for f in inside]
        weights = [n for n in names if _WEIGHT_NAME.match(n)]
        if part not in ("tokenizer", "scheduler") and not any(n.endswith(".safetensors") for n in weights):
            pickled = [n for n in names if n.endswith(_PICKLED)]
            raise ModelNotAvailable(f"{ref}: the {part} folder has no plain safetensors weights"
                                    + (f" (only {', '.join(pickled)}: a pickle that can run code, which soundry "
                                       "never reads)" if pickled else ""))
        wanted += [f"{part}/{n}" for n in names if n in _COMPONENT_FILES or n in weights]
    return wanted


def _has_layout(path: Path, kind: str) -> bool:
    if kind == "adapter":
        return (path / "adapter_config.json").is_file()
    if (path / DIFFUSERS_INDEX).is_file():
        return diffusers_complete(path)
    if (path / STABILITY_FILES[0]).is_file():
        return (path / STABILITY_FILES[1]).is_file()
    return all((path / f).is_file() for f in AUDIOCRAFT_FILES) or (path / "config.json").is_file()


def diffusers_complete(path: Path) -> bool:
    """Every component ``model_index.json`` names has its folder with a config and, where it has weights, all of
    them (every shard an index lists)."""
    import json

    try:
        index = json.loads((path / DIFFUSERS_INDEX).read_text())
    except (OSError, ValueError):
        return False
    for part, spec in index.items():
        if part.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = path / part
        if part == "scheduler":
            if not (sub / "scheduler_config.json").is_file():
                return False
        elif part == "tokenizer":
            if not any((sub / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer.model")):
                return False
        else:
            if not (sub / "config.json").is_file():
                return False
            for idx in sub.glob("*.safetensors.index.json"):
                try:
                    shards = set(json.loads(idx.read_text())["weight_map"].values())
                except (OSError, ValueError, KeyError, AttributeError):
                    return False
                if not all((sub / s).is_file() for s in shards):
                    return False
            if not any(sub.glob("*.safetensors")):
                return False
    return True


def fetch(source: str, download: bool = True, kind: str = "model") -> Path:
    """The local folder of a source: a folder as it is; a hub reference from the cache, else downloaded
    (``download``) with progress bars."""
    if not is_hub(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelNotAvailable(f"{kind} folder {path} does not exist")
        return path
    from huggingface_hub import HfApi, snapshot_download

    ref = parse_hub(source)
    try:
        cached = Path(snapshot_download(ref.repo, revision=ref.revision, local_files_only=True))
        if _has_layout(cached, kind):
            return cached
    except Exception:  # not (fully) in the cache
        pass
    if not download:
        raise ModelNotAvailable(f"the files of {ref} are not in the local cache (soundry models pull NAME "
                                "fetches them)")
    try:
        files = HfApi().list_repo_files(ref.repo, revision=ref.revision)
    except Exception as exc:
        raise _hub_error(ref, exc) from exc
    patterns = patterns_for(files, ref, kind)
    if STABILITY_FILES[0] in patterns:  # refuse an architecture soundry cannot convert before its weights come
        patterns += text_subfolder_files(_check_stability_config(ref), files, ref)
    return staged_download(ref, patterns)


def text_subfolder_files(cfg: dict, files: list[str], ref: HubRef) -> list[str]:
    """The files of the text encoder a Stable Audio 3 ``model_config.json`` places in a folder of this same
    repository (its conditioner's ``repo_id`` + ``subfolder``: Stability publishes the T5Gemma as
    ``t5gemma-b-b-ul2/`` beside the checkpoint): its config, plain safetensors weights and tokenizer files."""
    from soundry.models.errors import CheckpointError
    from soundry.models.stable_audio.convert import is_sa3_config, sa3_text_repo, sa3_text_subfolder

    if not is_sa3_config(cfg):
        return []
    try:
        sub = sa3_text_subfolder(cfg)
    except CheckpointError as exc:
        raise ModelNotAvailable(str(exc)) from exc
    if not sub or sa3_text_repo(cfg) != ref.repo:
        return []
    inside = [f[len(sub) + 1:] for f in files if f.startswith(sub + "/") and "/" not in f[len(sub) + 1:]]
    return [f"{sub}/{n}" for n in inside if n in _COMPONENT_FILES or _WEIGHT_NAME.match(n)]


def _check_stability_config(ref: HubRef) -> dict:
    import json
    import tempfile

    from huggingface_hub import hf_hub_download

    from soundry.models.errors import CheckpointError
    from soundry.models.stable_audio.convert import check_config

    with tempfile.TemporaryDirectory(prefix="soundry-config-") as tmp:
        try:
            path = hf_hub_download(ref.repo, STABILITY_FILES[0], revision=ref.revision, local_dir=tmp)
            cfg = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ModelNotAvailable(f"{ref}: its model_config.json is not JSON ({exc})") from exc
        except Exception as exc:
            raise _hub_error(ref, exc) from exc
    try:
        check_config(cfg, f"{ref}'s model_config.json")
    except CheckpointError as exc:
        raise ModelNotAvailable(str(exc)) from exc
    return cfg


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def staged_download(ref: HubRef, patterns: list[str]) -> Path:
    """``snapshot_download`` into a staging cache beside the real one, then published into it (see the module
    docstring). On any failure the staging cache is removed: nothing partial remains."""
    import shutil
    import tempfile

    from huggingface_hub import snapshot_download

    cache = hub_cache()
    cache.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".soundry-staging-", dir=cache))
    try:
        try:
            got = Path(snapshot_download(ref.repo, revision=ref.revision, allow_patterns=patterns, cache_dir=stage))
        except Exception as exc:
            raise _hub_error(ref, exc) from exc
        try:
            rel = got.resolve().relative_to(stage.resolve())
        except ValueError:  # not downloaded into the stage (a cache elsewhere): nothing to publish
            return got
        _publish(stage, cache, rel)
        return cache / rel
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, cache: Path, snapshot: Path) -> None:
    """Move a finished staging download into the cache: blobs, then the snapshot folder (renamed whole when the
    cache has none of that commit, else file by file), then refs, so a reader that finds a ref finds its files."""
    import os

    repo_dir = snapshot.parts[0]
    src, dst = stage / repo_dir, cache / repo_dir
    for sub in ("blobs",):
        if (src / sub).is_dir():
            (dst / sub).mkdir(parents=True, exist_ok=True)
            for blob in (src / sub).iterdir():
                if blob.name.endswith(".incomplete"):
                    continue
                if not (dst / sub / blob.name).exists():
                    os.replace(blob, dst / sub / blob.name)
    snap_src, snap_dst = stage / snapshot, cache / snapshot
    snap_dst.parent.mkdir(parents=True, exist_ok=True)
    if not snap_dst.exists():
        os.replace(snap_src, snap_dst)
    else:
        for f in sorted(snap_src.rglob("*")):
            if f.is_dir() and not f.is_symlink():
                continue
            target = snap_dst / f.relative_to(snap_src)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    if (src / "refs").is_dir():
        for ref_file in (src / "refs").rglob("*"):
            if ref_file.is_file():
                target = dst / "refs" / ref_file.relative_to(src / "refs")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(ref_file, target)


def snapshot_revision(path: Path) -> str | None:
    """The commit a hub cache snapshot folder holds (its name), None for any other folder."""
    path = Path(path)
    return path.name if path.parent.name == "snapshots" and _COMMIT.match(path.name) else None


def card_license(path: Path) -> str | None:
    """The ``license:`` field of a model card's YAML front matter (README.md), when present."""
    card = Path(path) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return None if value is None else str(value)


def folder_bytes(path: Path) -> int:
    """Bytes of the files in a folder (through the hub cache's links), not its subfolders' caches."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and ".cache" not in f.parts)
