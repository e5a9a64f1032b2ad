"""Models: registry, checkpoint loading, the LM, the text conditioner and the codecs."""

from soundry.models.registry import MODEL_NAMES, ModelNotAvailable, resolve_model_dir


def load_model(name_or_path: str, **kwargs):
    """Load an ``AudioModel`` (see ``soundry.models.loader.load_model``)."""
    from soundry.models.loader import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = ["MODEL_NAMES", "ModelNotAvailable", "load_model", "resolve_model_dir"]
