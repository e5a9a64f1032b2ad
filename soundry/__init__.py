"""soundry: a self-hosted text-to-audio service for AudioGen and MusicGen.

``soundry.Client`` is the Python SDK (see ``soundry.client``)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Client", "Audio", "Task", "SoundryError"):
        import soundry.client as client

        return getattr(client, name)
    raise AttributeError(f"module 'soundry' has no attribute {name!r}")
