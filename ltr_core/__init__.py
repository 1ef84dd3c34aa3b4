"""ltr_core: the thin library behind the ltr-study notebooks (data, models, losses, engine, metrics, results)."""

from .numerics import set_environment as _set_numerics_environment

_set_numerics_environment()  # before torch loads MKL: thread-count-independent GEMMs (ltr_core.numerics)

__version__ = "0.1.0"
