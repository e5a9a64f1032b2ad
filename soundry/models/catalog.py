"""The catalog: every model this process can serve, by name, with its capabilities as data.

Built-in models are listed here; models an operator adds (``soundry models add``) are records in
``DATA_DIR/models.json`` whose facts (channels, melody, licence) were read from the checkpoint when it was
added (``soundry.models.sources.added``); ``model_paths`` entries naming new models are read at start. A
:class:`Catalog` re-reads ``models.json`` when it changes, so a model added while the server runs is served,
listed, validated and documented (OpenAPI, Replicate's schemas) without a restart.

The process's catalog is :func:`active` (set by :func:`use` when a server, worker or CLI command starts); the
API, the service, the task runner and the loader all read it, never a copy taken at import.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

RECORDS = "models.json"


@dataclass(frozen=True)
class Family:
    """What every model of a family shares."""

    name: str
    # "autoregressive": codec tokens decoded step by step (an LM, a KV cache, a codec);
    # "diffusion": latents denoised step by step, then decoded by an autoencoder (no tokens, no KV cache)
    kind: str
    sample_rate: int
    context: float  # seconds one window covers (longer clips: windows)
    stride: float  # seconds a window moves on beyond the context
    decoders: tuple[str, ...]  # what turns its tokens into the stored audio (configs.decoder)
    inputs: tuple[str, ...]  # the audio inputs it takes (configs.input_audio; configs.melody for melody models)
    license: str  # the built-in releases' licence


_STABILITY = "Stability AI Community License"
FAMILIES: dict[str, Family] = {
    "audiogen": Family("audiogen", "autoregressive", 16000, 10.0, 2.0, ("encodec",), ("input_audio",),
                       "CC-BY-NC-4.0"),
    "musicgen": Family("musicgen", "autoregressive", 32000, 30.0, 18.0, ("encodec", "mbd"), ("input_audio",),
                       "CC-BY-NC-4.0"),
    # one window of latents as long as the model makes (no stride): the longest clip is the spec's max_seconds
    "stable-audio-open": Family("stable-audio-open", "diffusion", 44100, 47.55, 0.0, (), (), _STABILITY),
    "stable-audio-3": Family("stable-audio-3", "diffusion", 44100, 120.0, 0.0, (), (), _STABILITY),
}
# configs only the autoregressive family reads (refused, naming the field, on a diffusion model)
AUTOREGRESSIVE_CONFIGS = ("top_k", "top_p", "temperature", "input_audio", "continuation_start", "continuation_end",
                          "melody", "decoder")
# Each family's generation window: its context (max_duration, seconds) and the stride of windows beyond it
# (extend_stride), as audiocraft's AudioGen and MusicGen set them.
FAMILY_WINDOWS = {name: (f.context, f.stride) for name, f in FAMILIES.items()}


@dataclass(frozen=True)
class ModelSpec:
    """A model's name, where its weights come from, and what it can do."""

    name: str
    hub_repo: str
    family: str  # a key of FAMILIES
    description: str
    channels: int = 1
    # an added model (``soundry models add``, model_paths): where its weights are ("hf:owner/repo@revision" or a
    # folder, either format) and an optional LoRA adapter (same forms)
    source: str = ""
    adapter: str = ""
    melody: bool = False  # conditioned on a tune as well as the text (MusicGen-melody's chroma)
    license: str | None = None  # None: the family's (built-ins); an added model's as its card says ("" unknown)
    # diffusion models: the longest clip, the default denoising steps and guidance, whether a negative prompt
    # changes anything at the default guidance, and whether the hub repo asks its users to accept a licence
    max_seconds: float | None = None
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: bool = True
    gated: bool = False
    rate: int | None = None  # an added model's sample rate as its files say (None: the family's)

    @property
    def facts(self) -> Family:
        return FAMILIES[self.family]

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    def context(self) -> float:
        """Seconds one window covers (a diffusion model: its longest clip)."""
        return self.max_seconds if self.max_seconds is not None else self.facts.context

    @property
    def streams_live(self) -> bool:
        """Whether its audio reaches ``…/stream`` while it is generated (else once it exists)."""
        return self.kind == "autoregressive"

    @property
    def sample_rate(self) -> int:
        return self.rate or self.facts.sample_rate

    @property
    def decoders(self) -> list[str]:
        return list(self.facts.decoders)

    @property
    def inputs(self) -> list[str]:
        return [*self.facts.inputs, *(["melody"] if self.melody else [])]

    @property
    def licence(self) -> str | None:
        return self.facts.license if self.license is None else (self.license or None)

    def capabilities(self) -> dict:
        """What the model list and the wire APIs say about the model."""
        return {"name": self.name, "hub_repo": self.hub_repo, "family": self.family, "kind": self.kind,
                "description": self.description, "sample_rate": self.sample_rate, "channels": self.channels,
                "license": self.licence, "source": self.source or None, "adapter": self.adapter or None,
                "melody": self.melody, "decoders": self.decoders, "inputs": self.inputs,
                "context_seconds": self.context, "streams_live": self.streams_live, "default_steps": self.steps,
                "default_guidance": self.guidance, "negative_prompt": self.negative_prompt, "gated": self.gated}


BUILTINS = [
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
_SAO, _SA3 = "stable-audio-open", "stable-audio-3"
# Stability's releases (gated on the hub). Figures are the model cards' and the diffusers pipelines' defaults, not
# read from the gated repos here: SA3's 44.1 kHz is AutoencoderSAME's default, and the -base entries' guidance 7.0
# is soundry's choice (the pipeline defaults to 1.0, which suits the distilled checkpoints).
BUILTINS += [
    ModelSpec("stable-audio-open", "stabilityai/stable-audio-open-1.0", _SAO, "Stable Audio Open 1.0: sound effects "
              "and music, 44.1 kHz stereo, up to 47 s", 2, max_seconds=47.55, steps=100, guidance=7.0, gated=True),
    ModelSpec("stable-audio-3-small-sfx", "stabilityai/stable-audio-3-small-sfx", _SA3, "Stable Audio 3 small (433M, "
              "distilled): sound effects, up to 120 s", 2, max_seconds=120.0, steps=8, guidance=1.0,
              negative_prompt=False, gated=True),
    ModelSpec("stable-audio-3-small-music", "stabilityai/stable-audio-3-small-music", _SA3, "Stable Audio 3 small "
              "(433M, distilled): music, up to 120 s", 2, max_seconds=120.0, steps=8, guidance=1.0,
              negative_prompt=False, gated=True),
    ModelSpec("stable-audio-3-medium", "stabilityai/stable-audio-3-medium", _SA3, "Stable Audio 3 medium (1.4B, "
              "distilled): sound effects and music, up to 380 s", 2, max_seconds=380.0, steps=8, guidance=1.0,
              negative_prompt=False, gated=True),
    ModelSpec("stable-audio-3-small-sfx-base", "stabilityai/stable-audio-3-small-sfx-base", _SA3, "Stable Audio 3 "
              "small sfx, the non-distilled base (for fine-tuning; guidance and negative prompts apply)", 2,
              max_seconds=120.0, steps=100, guidance=7.0, gated=True),
    ModelSpec("stable-audio-3-small-music-base", "stabilityai/stable-audio-3-small-music-base", _SA3, "Stable Audio "
              "3 small music, the non-distilled base (for fine-tuning; guidance and negative prompts apply)", 2,
              max_seconds=120.0, steps=100, guidance=7.0, gated=True),
    ModelSpec("stable-audio-3-medium-base", "stabilityai/stable-audio-3-medium-base", _SA3, "Stable Audio 3 medium, "
              "the non-distilled base (for fine-tuning; guidance and negative prompts apply)", 2, max_seconds=380.0,
              steps=100, guidance=7.0, gated=True),
]
ALIASES = {"audiogen": "audiogen-medium", "musicgen": "musicgen-small", "musicgen-stereo": "musicgen-stereo-small",
           "stable-audio-open-1.0": "stable-audio-open"}
BUILTIN_NAMES = frozenset([*ALIASES, *(s.name for s in BUILTINS)])


@dataclass(frozen=True)
class AddedModel:
    """A record of ``models.json``: an added model, its source and the facts read from it when it was added."""

    name: str
    source: str
    adapter: str = ""
    family: str = "musicgen"
    added_at: str = ""
    origin: str = "data directory"  # or "model_paths"
    channels: int | None = None  # None: not recorded (a record written before soundry recorded facts)
    melody: bool = False
    license: str = ""
    # a diffusion model's (Stable Audio) facts as its folder says: rate, longest clip, default steps and guidance
    sample_rate: int | None = None
    max_seconds: float | None = None
    steps: int | None = None
    guidance: float | None = None

    def spec(self) -> ModelSpec:
        kind = "hub" if self.source.startswith("hf:") else "folder"
        what = f"{self.family} from {kind} {self.source}" + (f" + LoRA adapter {self.adapter}" if self.adapter else "")
        diffusion = FAMILIES.get(self.family) is not None and FAMILIES[self.family].kind == "diffusion"
        return ModelSpec(self.name, self.source, self.family, what, channels=self.channels or 1, source=self.source,
                         adapter=self.adapter, melody=self.melody, license=self.license, rate=self.sample_rate,
                         max_seconds=self.max_seconds, steps=self.steps, guidance=self.guidance,
                         negative_prompt=not diffusion or (self.guidance or 1.0) > 1.0)


_RECORD_FIELDS = ("source", "adapter", "family", "added_at", "channels", "melody", "license", "sample_rate",
                  "max_seconds", "steps", "guidance")


def read_records(data_dir: Path) -> dict[str, AddedModel]:
    path = Path(data_dir) / RECORDS
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    return {name: AddedModel(name=name, **{k: v for k, v in entry.items() if k in _RECORD_FIELDS})
            for name, entry in raw.get("models", {}).items()}


def write_records(data_dir: Path, models: dict[str, AddedModel]) -> None:
    """Written whole to a temporary file, then renamed over the old one (a reader sees the old or the new)."""
    import os
    import tempfile

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    body = {"models": {m.name: {k: getattr(m, k) for k in _RECORD_FIELDS} for m in models.values()}}
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".models-")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
    os.replace(tmp, data_dir / RECORDS)


@dataclass
class Catalog:
    """Built-ins, the models recorded in ``data_dir``'s ``models.json`` (re-read when the file changes) and
    ``extra`` specs (``model_paths`` entries; models registered in this process)."""

    data_dir: Path | None = None
    extra: dict[str, ModelSpec] = field(default_factory=dict)
    _stamp: tuple | None = field(default=None, repr=False)
    _recorded: dict[str, ModelSpec] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _records(self) -> dict[str, ModelSpec]:
        if self.data_dir is None:
            return {}
        path = Path(self.data_dir) / RECORDS
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._recorded = {n: m.spec() for n, m in read_records(self.data_dir).items()} if stamp else {}
                self._stamp = stamp
            return self._recorded

    def specs(self) -> dict[str, ModelSpec]:
        """Every canonical name → its spec (added models after the built-ins)."""
        return {**{s.name: s for s in BUILTINS}, **self._records(), **self.extra}

    def names(self) -> list[str]:
        """Every name a request may use: the aliases, then the canonical names."""
        return [*ALIASES, *self.specs()]

    def find(self, name: str) -> ModelSpec | None:
        """The spec of a name or alias (case-insensitive), or None; ``models.json`` is looked at once."""
        key = name.strip().lower()
        return self.specs().get(ALIASES.get(key, key))

    def get(self, name: str) -> ModelSpec:
        """As ``find``; KeyError naming the known models."""
        spec = self.find(name)
        if spec is None:
            raise KeyError(f"unknown model {name!r}; known models: {', '.join(self.names())}")
        return spec

    def canonical(self, name: str) -> str:
        """'audiogen' → 'audiogen-medium'; KeyError naming the known models."""
        return self.get(name).name

    def register(self, spec: ModelSpec) -> None:
        """Serve ``spec`` in this process (a ``model_paths`` entry, a test's model)."""
        self.extra[spec.name] = spec


_active = Catalog()


def active() -> Catalog:
    """The process's catalog."""
    return _active


def use(catalog: Catalog) -> Catalog:
    """Make ``catalog`` the process's (a server, a worker or a CLI command at start)."""
    global _active
    _active = catalog
    return catalog


def canonical_name(name: str) -> str:
    return _active.canonical(name)


def model_family(name: str) -> str:
    return _active.get(name).family


def register(spec: ModelSpec) -> None:
    _active.register(spec)
