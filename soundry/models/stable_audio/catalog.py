"""The Stable Audio models soundry knows by name, as the sampling code reads them: derived from the catalog's
entries (``soundry.models.catalog``, the one place the service and the model list read).

Figures are the releases' own (model cards and the diffusers pipelines' defaults). A loaded folder's configs are
the truth for its rate, channels and latent sizes; these entries say what to expect before a download.
Not checked against the gated repos from here: SA3's 44.1 kHz is AutoencoderSAME's default ``sampling_rate``, and
the ``-base`` entries' guidance 7.0 is soundry's choice (diffusers' pipeline defaults to 1.0, no guidance, which
suits the distilled checkpoints; its docs call guidance meaningful for the base ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from soundry.models.catalog import ALIASES, BUILTINS


@dataclass(frozen=True)
class StableAudioEntry:
    name: str
    hub_repo: str
    kind: str  # "sao" (StableAudioPipeline) | "sa3" (StableAudio3Pipeline)
    license: str
    sample_rate: int
    channels: int
    max_duration: float  # seconds
    default_steps: int
    default_guidance: float  # guidance (cfg_coef); <= 1 means no classifier-free guidance
    negative_prompt: bool  # whether a negative prompt changes anything at the default guidance
    description: str
    gated: bool = True


ENTRIES = [StableAudioEntry(s.name, s.hub_repo, {"stable-audio-open": "sao", "stable-audio-3": "sa3"}[s.family],
                            s.licence or "", s.sample_rate, s.channels, s.context, s.steps or 0, s.guidance or 1.0,
                            s.negative_prompt, s.description, s.gated)
           for s in BUILTINS if s.kind == "diffusion"]
CATALOG: dict[str, StableAudioEntry] = {e.name: e for e in ENTRIES}


def entry(name: str) -> StableAudioEntry | None:
    """The catalog entry for a name or alias (case-insensitive), or None."""
    key = name.strip().lower()
    return CATALOG.get(ALIASES.get(key, key))
