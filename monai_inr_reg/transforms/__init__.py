"""MONAI transforms: register a pair inside a ``Compose`` pipeline, and apply a saved field later.

- :class:`InrRegistration` / :class:`InrRegistrationd`: register ``moving`` onto ``fixed`` and warp
  moving-grid images (the moving image, labels) onto the fixed grid; output the MONAI DDF.
- :class:`ApplyDdf` / :class:`ApplyDdfd`: warp more moving-grid images with a saved DDF.

Names follow MONAI: ``<Name>`` for the array transform, ``<Name>d`` for its dictionary twin;
``Apply*`` as MONAI's ``ApplyPending`` / ``ApplyTransformToPoints`` for applying something
computed earlier, ``Ddf`` as MONAI's ``Warp(image, ddf)`` / ``DVF2DDF`` name the field.
"""

from __future__ import annotations

from .array import ApplyDdf, InrRegistration
from .dictionary import ApplyDdfd, ApplyDdfD, ApplyDdfDict, InrRegistrationd, InrRegistrationD, InrRegistrationDict

__all__ = [
    "InrRegistration",
    "InrRegistrationd",
    "InrRegistrationD",
    "InrRegistrationDict",
    "ApplyDdf",
    "ApplyDdfd",
    "ApplyDdfD",
    "ApplyDdfDict",
]
