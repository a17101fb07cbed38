"""timematters: temporal self-supervision for video transformers."""
__version__ = "0.1.0"


def create_model(name, **kwargs):
    """See :func:`timematters.models.create_model`."""
    from .models import create_model as _create

    return _create(name, **kwargs)


def list_models():
    from .models import list_models as _list

    return _list()


def from_pretrained(source, **kwargs):
    """See :func:`timematters.models.hf.from_pretrained`: a run, an export folder, a Hugging Face folder or Hub id."""
    from .models.hf import from_pretrained as _load

    return _load(source, **kwargs)
