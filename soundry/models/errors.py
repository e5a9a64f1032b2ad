"""The errors every part of ``soundry.models`` raises (and the layers above catch)."""


class ModelNotAvailable(RuntimeError):
    """The model's weights cannot be found locally nor downloaded."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not in a format soundry serves."""
