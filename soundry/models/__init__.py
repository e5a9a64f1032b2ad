"""Models: the catalog, the families (``audiocraft``: LM, codecs, conditioners, checkpoint formats), where
weights come from (``sources``), and ``load_model``."""

from soundry.models.errors import CheckpointError, ModelNotAvailable
from soundry.models.sources.paths import resolve_model_dir


def load_model(name_or_path: str, **kwargs):
    """Load a model by catalog name or folder (see ``soundry.models.loader.load_model``)."""
    from soundry.models.loader import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = ["CheckpointError", "ModelNotAvailable", "load_model", "resolve_model_dir"]
