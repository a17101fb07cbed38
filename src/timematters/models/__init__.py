"""Video (and image) transformer backbones with one surface, and pure state_dict converters."""
from .base import Features
from .factory import MODELS, create_model, is_image_model, list_models
from .motionformer import Motionformer
from .timesformer import TimeSformer
from .vit import VisionTransformer
from .xvit import XViT


def load_pretrained(model, path, **kwargs):
    """See :func:`timematters.models.convert.load_pretrained`."""
    from .convert import load_pretrained as _load

    return _load(model, path, **kwargs)


__all__ = ["Features", "MODELS", "create_model", "is_image_model", "list_models", "load_pretrained",
           "Motionformer", "TimeSformer", "VisionTransformer", "XViT"]
