"""Read files: images into channel-first MetaTensors (RAS affine), as MONAI's ``LoadImage`` does; ITK transforms."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_image", "read_transform", "read_linear_transform", "matrix_from_transform"]


def load_image(path, *, name: str = "image"):
    """Load ``path`` (NIfTI, MHA/MHD, NRRD, PNG, ...) as a ``(C, *S)`` MetaTensor with a RAS affine.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_image(): '{name}' file {str(path)!r} does not exist")
    from monai.transforms import LoadImage  # lazy: keeps `import monai_inr_reg` light

    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # MONAI raises several types for unreadable files
        raise ValueError(f"load_image(): '{name}' file {str(path)!r} could not be read as an image: {err}") from None


def read_transform(path, *, name: str = "path"):
    """Read one ITK transform file (``.h5``, ``.tfm``, ``.txt``, ANTs ``.mat``) as an ITK transform.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a transform ITK can read, or holds more than one transform.
    """
    import itk  # lazy: the first use of itk costs seconds

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_transform(): {name!r} {str(path)!r} does not exist")
    try:
        transforms = itk.transformread(str(path))
    except Exception as error:  # ITK raises RuntimeError with a C++ trace
        reason = next((line.split("):", 1)[-1].strip() for line in str(error).splitlines() if "ITK ERROR" in line),
                      type(error).__name__)
        raise ValueError(f"read_transform(): {name!r} {str(path)!r} is not a transform file ITK can read ({reason})") from None
    if len(transforms) != 1:
        raise ValueError(f"read_transform(): {name!r} {str(path)!r} holds {len(transforms)} transforms, expected 1; "
                         f"use itk.transformread for a list")
    return transforms[0]


def read_linear_transform(path, ndim: int, *, name: str = "initial_transform"):
    """A linear ITK transform file -> ``(D + 1, D + 1)`` float64 matrix, LPS mm, points fixed -> moving.

    Any transform ITK reads counts (Euler, Versor, Similarity, Affine, a composite of them, ANTs'
    ``.mat``) as long as it is linear: the matrix is measured from where the transform takes the
    origin and the unit points (100 mm), then checked on further points.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, another dimension than ``ndim``, or not linear (a displacement field).
    """
    return matrix_from_transform(read_transform(path, name=name), ndim, name=f"{name} {str(path)!r}")


def matrix_from_transform(transform, ndim: int, *, name: str = "transform"):
    """A linear ITK transform object -> ``(D + 1, D + 1)`` float64 matrix, LPS mm (see :func:`read_linear_transform`).

    Raises:
        ValueError: another dimension than ``ndim``, or not linear.
    """
    import numpy as np
    import torch

    dims = int(transform.GetInputSpaceDimension())
    if dims != ndim:
        raise ValueError(f"matrix_from_transform(): {name} is a {dims}D transform, the images are {ndim}D")
    parts = [transform.GetNthTransform(i) for i in range(transform.GetNumberOfTransforms())] \
        if hasattr(transform, "GetNumberOfTransforms") else [transform]
    kinds = [str(part.GetNameOfClass()) for part in parts]
    if any("DisplacementField" in kind or "BSpline" in kind for kind in kinds):
        raise ValueError(f"matrix_from_transform(): {name} holds a non-linear transform ({', '.join(kinds)}); only "
                         f"rigid or affine transforms can start a registration")
    scale = 100.0
    basis = np.vstack([np.zeros(ndim), scale * np.eye(ndim)])
    mapped = np.array([list(transform.TransformPoint([float(v) for v in p])) for p in basis])
    matrix = np.eye(ndim + 1)
    matrix[:ndim, ndim] = mapped[0]
    matrix[:ndim, :ndim] = (mapped[1:] - mapped[0]).T / scale
    probes = np.random.default_rng(0).uniform(-150.0, 150.0, (8, ndim))
    expected = probes @ matrix[:ndim, :ndim].T + matrix[:ndim, ndim]
    actual = np.array([list(transform.TransformPoint([float(v) for v in p])) for p in probes])
    gap = float(np.abs(actual - expected).max())
    if gap > 1e-4:
        raise ValueError(f"matrix_from_transform(): {name} ({transform.GetNameOfClass()}) is not a "
                         f"linear transform (off a matrix by up to {gap:.3g} mm); only rigid or affine transforms "
                         f"can start a registration")
    return torch.from_numpy(matrix)
