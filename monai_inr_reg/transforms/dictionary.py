"""MONAI dictionary transforms: :class:`InrRegistrationd` and :class:`ApplyDdfd`.

Each unpacks keys, calls its array twin in :mod:`monai_inr_reg.transforms.array`, and packs the
result; see the array transforms for the conventions of every output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms.inverse import TraceableTransform
from monai.transforms.transform import MapTransform
from monai.utils import ensure_tuple_rep

from .array import ApplyDdf, InrRegistration, _check_mode

__all__ = ["InrRegistrationd", "ApplyDdfd", "InrRegistrationD", "InrRegistrationDict", "ApplyDdfD", "ApplyDdfDict"]


def _missing(key: Hashable, transform) -> KeyError:
    # MONAI's wording (MapTransform.key_iterator)
    return KeyError(f"Key `{key}` of transform `{transform.__class__.__name__}` was missing in the data"
                    " and allow_missing_keys==False.")


class InrRegistrationd(MapTransform, TraceableTransform):
    """Dictionary twin of :class:`~monai_inr_reg.transforms.array.InrRegistration`: see there.

    Registers ``data[moving_key]`` onto ``data[fixed_key]``, then replaces every ``keys`` entry
    (images on the **moving** grid: the moving image itself, its labels, other channels) by its
    warp onto the fixed grid, and stores the displacement field at ``ddf_key``.

    Args:
        keys: moving-grid images to warp with the found field (usually ``moving_key`` and label keys).
        fixed_key: key of the fixed image.
        moving_key: key of the moving image (the one registered).
        ddf_key: where to store the ``(D, *S_fixed)`` MONAI DDF (voxel units, fixed grid).
        warped_key: optional extra key for the warped moving image (leave ``moving_key`` out of
            ``keys`` to keep the original moving image next to it).
        mode: per key, ``"bilinear"`` for images, ``"nearest"`` for labels: one value or one per key.
        preset: as for ``InrRegistration``.
        allow_missing_keys: skip missing ``keys``; when ``fixed_key`` or ``moving_key`` is missing,
            return the data unchanged. Otherwise a missing key raises ``KeyError``.
        fixed_mask_key, moving_mask_key: optional keys of masks on the fixed / moving grid (nonzero
            = inside; e.g. loaded with ``LoadImaged`` like the images): the registration's data
            terms use only what lies inside. A named key that is missing raises ``KeyError``
            (unless ``allow_missing_keys``, which then registers without that mask).
        initial_transform_key: optional key of an initial transform: a ``(D + 1, D + 1)`` matrix
            (fixed LPS mm -> moving LPS mm) or the path of a linear ITK ``.h5`` / ``.tfm`` or ANTs
            ``.mat`` file, as a datalist entry holds it.
        seed, device, progress, overrides: as for ``InrRegistration``.
    """

    def __init__(self, keys: KeysCollection, fixed_key: str = "fixed", moving_key: str = "moving",
                 ddf_key: str = "ddf", warped_key: str | None = None, mode: str | Sequence[str] = "bilinear",
                 preset: str | dict = "deformable", allow_missing_keys: bool = False, *,
                 fixed_mask_key: str | None = None, moving_mask_key: str | None = None,
                 initial_transform_key: str | None = None, seed: int = 0, device=None, progress=None,
                 **overrides) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fixed_mask_key, self.moving_mask_key = fixed_mask_key, moving_mask_key
        self.initial_transform_key = initial_transform_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        for m in self.mode:
            _check_mode(m, "mode", "InrRegistrationd")
        self.fixed_key, self.moving_key = fixed_key, moving_key
        self.ddf_key, self.warped_key = ddf_key, warped_key
        self.registration = InrRegistration(preset, seed=seed, device=device, progress=progress, **overrides)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for role in (self.fixed_key, self.moving_key):
            if role not in d:
                if self.allow_missing_keys:
                    return d
                raise _missing(role, self)
        pairs = list(self.key_iterator(d, self.mode))  # raises KeyError for missing keys
        optional = {}
        for argument, key in (("fixed_mask", self.fixed_mask_key), ("moving_mask", self.moving_mask_key),
                              ("initial_transform", self.initial_transform_key)):
            if key is None:
                continue
            if key not in d and not self.allow_missing_keys:
                raise _missing(key, self)
            optional[argument] = d.get(key)
        fixed, moving = d[self.fixed_key], d[self.moving_key]
        outputs = self.registration(fixed, moving, *[d[key] for key, _ in pairs],
                                    label_mode=[mode for _, mode in pairs], **optional)
        warped, ddf = outputs[0], outputs[1]
        for (key, _), value in zip(pairs, outputs[2:]):
            d[key] = value
        d[self.ddf_key] = ddf
        if self.warped_key is not None:
            d[self.warped_key] = warped
        return d


class ApplyDdfd(MapTransform, TraceableTransform):
    """Dictionary twin of :class:`~monai_inr_reg.transforms.array.ApplyDdf`: see there.

    Args:
        keys: moving-grid images to warp onto the fixed grid with ``data[ddf_key]``.
        ddf_key: key of the ``(D, *S_fixed)`` MONAI DDF (a MetaTensor with the fixed affine,
            e.g. ``InrRegistrationd``'s output or a loaded ``ddf.nii.gz``).
        mode: per key, ``"bilinear"`` for images, ``"nearest"`` for labels.
        reference_key: optional key of an image on the fixed grid whose affine and meta the outputs take.
        allow_missing_keys: skip missing ``keys`` (and everything when ``ddf_key`` is missing);
            otherwise a missing key raises ``KeyError``.
    """

    def __init__(self, keys: KeysCollection, ddf_key: str = "ddf", mode: str | Sequence[str] = "bilinear",
                 reference_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        for m in self.mode:
            _check_mode(m, "mode", "ApplyDdfd")
        self.ddf_key, self.reference_key = ddf_key, reference_key
        self.apply = ApplyDdf()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for role in (self.ddf_key, self.reference_key):
            if role is not None and role not in d:
                if self.allow_missing_keys:
                    return d
                raise _missing(role, self)
        reference = d[self.reference_key] if self.reference_key is not None else None
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.apply(d[key], d[self.ddf_key], reference, mode=mode)
        return d


InrRegistrationD = InrRegistrationDict = InrRegistrationd
ApplyDdfD = ApplyDdfDict = ApplyDdfd
