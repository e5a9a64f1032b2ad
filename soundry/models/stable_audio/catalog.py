"""The Stable Audio models soundry knows by name, as plain data (what the service and the model list read).

Figures are the releases' own (model cards and the diffusers pipelines' defaults). A loaded folder's configs are
the truth for its rate, channels and latent sizes; these entries say what to expect before a download.
Not checked against the gated repos from here: SA3's 44.1 kHz is AutoencoderSAME's default ``sampling_rate``, and
the ``-base`` entries' guidance 7.0 is soundry's choice (diffusers' pipeline defaults to 1.0, no guidance, which
suits the distilled checkpoints; its docs call guidance meaningful for the base ones).
"""

from __future__ import annotations

from dataclasses import dataclass

SAO_LICENSE = "Stability AI Community License"
SA3_LICENSE = "Stability AI Community License"


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


ENTRIES = [
    StableAudioEntry("stable-audio-open", "stabilityai/stable-audio-open-1.0", "sao", SAO_LICENSE, 44100, 2, 47.55,
                     100, 7.0, True, "Stable Audio Open 1.0: sound effects and music, 44.1 kHz stereo, up to 47 s"),
    StableAudioEntry("stable-audio-3-small-sfx", "stabilityai/stable-audio-3-small-sfx", "sa3", SA3_LICENSE, 44100, 2,
                     120.0, 8, 1.0, False, "Stable Audio 3 small (433M, distilled): sound effects, up to 120 s"),
    StableAudioEntry("stable-audio-3-small-music", "stabilityai/stable-audio-3-small-music", "sa3", SA3_LICENSE,
                     44100, 2, 120.0, 8, 1.0, False, "Stable Audio 3 small (433M, distilled): music, up to 120 s"),
    StableAudioEntry("stable-audio-3-medium", "stabilityai/stable-audio-3-medium", "sa3", SA3_LICENSE, 44100, 2,
                     380.0, 8, 1.0, False, "Stable Audio 3 medium (1.4B, distilled): sound effects and music, up to "
                     "380 s"),
    StableAudioEntry("stable-audio-3-small-sfx-base", "stabilityai/stable-audio-3-small-sfx-base", "sa3", SA3_LICENSE,
                     44100, 2, 120.0, 100, 7.0, True, "Stable Audio 3 small sfx, the non-distilled base (for "
                     "fine-tuning; guidance and negative prompts apply)"),
    StableAudioEntry("stable-audio-3-small-music-base", "stabilityai/stable-audio-3-small-music-base", "sa3",
                     SA3_LICENSE, 44100, 2, 120.0, 100, 7.0, True, "Stable Audio 3 small music, the non-distilled "
                     "base (for fine-tuning; guidance and negative prompts apply)"),
    StableAudioEntry("stable-audio-3-medium-base", "stabilityai/stable-audio-3-medium-base", "sa3", SA3_LICENSE, 44100,
                     2, 380.0, 100, 7.0, True, "Stable Audio 3 medium, the non-distilled base (for fine-tuning; "
                     "guidance and negative prompts apply)"),
]
CATALOG: dict[str, StableAudioEntry] = {e.name: e for e in ENTRIES}
ALIASES = {"stable-audio-open-1.0": "stable-audio-open"}


def entry(name: str) -> StableAudioEntry | None:
    """The catalog entry for a name or alias (case-insensitive), or None."""
    key = name.strip().lower()
    return CATALOG.get(ALIASES.get(key, key))
