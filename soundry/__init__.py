"""soundry: a self-hosted text-to-audio service for AudioGen and MusicGen."""

__version__ = "0.1.0"
