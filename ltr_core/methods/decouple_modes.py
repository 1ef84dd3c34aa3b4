"""The stage-2 modes of the decoupling family: ``decouple_mode`` -> :class:`Mode`, one registry entry each.

This module imports nothing heavy, so :mod:`ltr_core.config` takes the valid ``decouple_mode`` values from
:data:`MODES` (validated before a kernel or torch starts). Each entry names the class that builds the mode's
stage-2 :class:`~ltr_core.study.Plan` (``"<module>:<Class>"``, imported on first use, so a mode can live in
its own module) and says whether it trains:

* ``trains=True``: a subclass of :class:`ltr_core.methods.decouple.Retrain`; ``head(model, data)`` is the
  classifier ``engine.fit`` trains on the frozen stage-1 backbone (online or on cached features),
  ``record(head)`` adds results.json keys (cRT, LWS);
* ``trains=False``: a subclass of :class:`~ltr_core.methods.decouple.PostHoc`; ``solve(...)`` computes the
  head from the cached stage-1 features (NCM), or of :class:`~ltr_core.methods.decouple.TauSweep`: a family
  of adjusted classifiers with one knob, ``logits_at`` / ``adjusted_head``, swept over ``decouple_tau_grid``
  and chosen on val (else labelled oracle) like τ-norm and post-hoc LA.

A new post-hoc method is one class (``ltr_core/methods/decouple_maxnorm.py`` is the worked example in
CONTRIBUTING.md) plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One stage-2 mode: where its class is, whether it trains, its formula (one line, for the docs)."""

    impl: str
    trains: bool
    formula: str

    def load(self) -> type:
        """The class of ``impl`` (``"<module>:<Class>"``)."""
        module, _, name = self.impl.partition(":")
        return getattr(importlib.import_module(module), name)


MODES: dict[str, Mode] = {
    "crt": Mode("ltr_core.methods.decouple:CRT", True, "re-initialised z = W f + b trained, backbone frozen"),
    "lws": Mode("ltr_core.methods.decouple:LWS", True, "z_c = g_c (w_c f + b_c), only g trained"),
    "tau_norm": Mode("ltr_core.methods.decouple:TauNorm", False, "z_c = w_c f / |w_c|^tau, bias dropped"),
    "posthoc_la": Mode("ltr_core.methods.decouple:PosthocLA", False, "z = W f + b - tau log pi"),
    "ncm": Mode("ltr_core.methods.decouple:NCM", False, "nearest class mean of the stage-1 train features"),
    "maxnorm": Mode("ltr_core.methods.decouple_maxnorm:MaxNorm", False, "w_c capped at the q-quantile of the norms"),
}
