"""monai_inr_reg: image registration with untrained hash-grid coordinate networks.

Per image pair, a motion net ``u(x)`` (fixed point -> displacement, mm) and an image net
``I(x)`` (point -> intensities) are fitted from scratch with one L2 loss; see ``register``.

Shape letters used in every docstring: ``N`` batch, ``C`` channels, ``D`` spatial dimensions
(2 or 3), ``P`` points, ``*S`` spatial size in array order (``*S_fixed``, ``*S_moving``), ``L``
hash levels, ``F`` features per level. Physical points are LPS millimetres with components
(x, y, z) unless a name says ``ras``; see :mod:`monai_inr_reg.core.grid` for every convention.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["register", "RegistrationResult", "register_itk", "apply_transform", "load_preset", "__version__"]

# Eager, because the submodule `register` would otherwise shadow the function of the same name.
from .register import register  # noqa: E402
from .result import RegistrationResult  # noqa: E402

_LAZY = {
    "register_itk": ("monai_inr_reg.itk_registration", "register_itk"),
    "apply_transform": ("monai_inr_reg.apply", "apply_transform"),
    "load_preset": ("monai_inr_reg.config", "load_preset"),
}


def __getattr__(name):
    # lazy so that `import monai_inr_reg` stays cheap (itk's first use costs seconds)
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'monai_inr_reg' has no attribute {name!r}")
