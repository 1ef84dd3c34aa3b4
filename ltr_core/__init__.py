"""ltr_core: the thin library behind the ltr-study notebooks (data, models, losses, engine, metrics, results)."""

__version__ = "0.1.0"
