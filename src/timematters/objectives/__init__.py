"""Training objectives. One file per method; ``build_objective`` is the one place that maps a config's
method name to its class (explicit, no registry).

Every objective class takes ``(model, *, num_classes, label_smoothing=0.0, weights=None, **args)``:
``model`` is the backbone (heads are sized from ``model.embed_dim``, ``model.num_frames``, ...),
``weights`` maps loss-term names to lambdas, ``args`` are the method's own typed keywords.
"""
from __future__ import annotations

from .base import Objective


def build_objective(method: str, model, *, num_classes: int, label_smoothing: float = 0.0,
                    weights: dict | None = None, **args) -> Objective:
    kw = dict(num_classes=num_classes, label_smoothing=label_smoothing, weights=weights or {}, **args)
    if method == "supervised":
        from .time import TIME
        return TIME(model, **{**kw, "weights": {"order": 0, "debias": 0, "flow": 0, **kw["weights"]}})
    if method == "time":
        from .time import TIME
        return TIME(model, **kw)
    if method == "time_pretrain":
        from .time import TIME
        # as a pretext task the order head sees shuffled clips (see TIME's ``order_on``)
        return TIME(model, **{"order_on": "shuffled", **kw, "weights": {"cls": 0, "debias": 0, **kw["weights"]}})
    if method == "image_time":
        from .image_time import ImageTIME
        return ImageTIME(model, **kw)
    if method == "rtt":
        from .rtt import RTT
        return RTT(model, **kw)
    if method == "taco":
        from .taco import TaCo
        return TaCo(model, **kw)
    if method == "svt":
        from .svt import SVT
        return SVT(model, **kw)
    raise ValueError(f"unknown objective method '{method}' "
                     "(known: supervised, time, time_pretrain, image_time, rtt, taco, svt)")


__all__ = ["Objective", "build_objective"]
