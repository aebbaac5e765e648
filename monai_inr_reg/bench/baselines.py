"""ANTs (antspyx) and elastix (itk-elastix) baselines, returning maps in our convention.

Every function takes arrays in array order with their :class:`~monai_inr_reg.core.grid.ImageGrid`
and builds the ANTs / ITK image with the same voxel -> LPS mm geometry (origin, spacing,
direction), so the tools' physical space **is** our LPS mm and their transforms (which map fixed
points to moving points, the resampling direction) need no conversion:

- rigid results: ``matrix_mm`` ``(D + 1, D + 1)`` float64, fixed LPS mm -> moving LPS mm;
- deformable results: ``ddf_mm`` ``(D, *S_fixed)`` float64, LPS mm, the whole composed map
  (affine and SyN field) minus identity, on the fixed grid.

Settings (quoted in the benchmark output):

- ANTs rigid: ``type_of_transform="Rigid"`` with ``aff_metric="meansquares"`` (single-modal) or
  ``"mattes"`` (Mattes MI, multi-modal); other options are antspyx defaults.
- elastix rigid: elastix's default ``rigid`` map (Euler, AdvancedMattesMutualInformation,
  AdaptiveStochasticGradientDescent), 4 resolutions, 1024 iterations, started from rotations
  -0.4, 0, 0.4 rad about the image centre; the start with the lowest final metric wins
  (MultiRegEval's ``mi_ms.py`` on the Zurich set).
- ANTs affine: ``type_of_transform="Affine"`` (Mattes MI, antspyx defaults).
- ANTs SyN (MI): ``type_of_transform="SyN"`` (affine + SyN, Mattes MI, antspyx defaults).
- ANTs SyN (CC): ``type_of_transform="SyN", syn_metric="CC", syn_sampling=2`` (radius 2; the
  ``SyNCC`` preset takes over 25 min per 3D brain here).

``ants`` and ``itk`` are imported inside the functions (optional extras; ``itk`` is slow to load).
"""

from __future__ import annotations

import math
import os
import re
import tempfile

import numpy as np
import torch

from ..core.grid import ImageGrid, apply_affine

__all__ = ["ants_available", "elastix_available", "ants_rigid", "ants_affine", "ants_syn", "elastix_rigid", "ANTS_SETTINGS",
           "ELASTIX_SETTINGS", "matrix_to_ddf_mm"]

ANTS_SETTINGS = {
    "ants-rigid-ms": 'ants.registration(type_of_transform="Rigid", aff_metric="meansquares")',
    "ants-rigid-mi": 'ants.registration(type_of_transform="Rigid", aff_metric="mattes")',
    "ants-affine": 'ants.registration(type_of_transform="Affine")  # Mattes MI',
    "ants-syn": 'ants.registration(type_of_transform="SyN")  # affine + SyN, Mattes MI',
    "ants-syncc": 'ants.registration(type_of_transform="SyN", syn_metric="CC", syn_sampling=2)  # CC radius 2, not SyNCC',
}
ELASTIX_SETTINGS = ("elastix default 'rigid' map (Euler + AdvancedMattesMutualInformation + ASGD), 4 resolutions, "
                    "1024 iterations, best of 3 starts at -0.4 / 0 / 0.4 rad (MultiRegEval mi_ms.py)")


def ants_available() -> bool:
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def elastix_available() -> bool:
    try:
        import itk

        return hasattr(itk, "elastix_registration_method")
    except ImportError:
        return False


def _import_ants():
    try:
        import ants
    except ImportError as err:
        raise ImportError("bench: the ANTs baselines need antspyx: pip install 'monai-inr-reg[bench]'") from err
    return ants


def _import_itk():
    try:
        import itk
    except ImportError as err:
        raise ImportError("bench: the elastix baseline needs itk-elastix: pip install 'monai-inr-reg[bench]'") from err
    if not hasattr(itk, "elastix_registration_method"):
        raise ImportError("bench: the elastix baseline needs itk-elastix: pip install itk-elastix")
    return itk


def _ants_image(array: np.ndarray, grid: ImageGrid):
    ants = _import_ants()
    origin, spacing, direction = grid.itk_geometry()
    # antspyx keeps numpy index order: array[i, j, k] is ITK index (i, j, k)
    return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32), origin=tuple(origin),
                           spacing=tuple(spacing), direction=direction)


def _ants_seed(seed: int) -> None:
    ants = _import_ants()
    ants.config._random_seed = int(seed)  # what ants.registration passes as --random-seed


def _ants_linear_matrix(path: str, ndim: int) -> torch.Tensor:
    """An ANTs / ITK MatrixOffset transform file -> ``(D + 1, D + 1)`` float64: y = A (x - c) + c + t."""
    ants = _import_ants()
    tx = ants.read_transform(path)
    p = np.asarray(tx.parameters, dtype=np.float64)
    c = np.asarray(tx.fixed_parameters, dtype=np.float64)
    a, t = p[: ndim * ndim].reshape(ndim, ndim), p[ndim * ndim:]
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = a
    out[:ndim, ndim] = t + c - a @ c
    return torch.as_tensor(out)


def ants_rigid(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
               metric: str = "mattes", seed: int = 0) -> torch.Tensor:
    """ANTs rigid registration; returns ``matrix_mm`` (fixed LPS mm -> moving LPS mm), float64.

    Args:
        metric: ``"meansquares"`` (single-modal) or ``"mattes"`` (Mattes mutual information).
    """
    return _ants_linear("Rigid", fixed, fixed_grid, moving, moving_grid, metric=metric, seed=seed)


def ants_affine(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
                metric: str = "mattes", seed: int = 0) -> torch.Tensor:
    """ANTs affine registration (``type_of_transform="Affine"``, antspyx defaults: with Mattes MI, the linear
    part of its SyN); returns ``matrix_mm`` (fixed LPS mm -> moving LPS mm), float64.

    Args:
        metric: ``"mattes"`` or ``"meansquares"``.
    """
    return _ants_linear("Affine", fixed, fixed_grid, moving, moving_grid, metric=metric, seed=seed)


def _ants_linear(kind: str, fixed, fixed_grid: ImageGrid, moving, moving_grid: ImageGrid, *, metric: str,
                 seed: int) -> torch.Tensor:
    if metric not in ("meansquares", "mattes"):
        raise ValueError(f"ants_{kind.lower()}(): 'metric' must be 'meansquares' or 'mattes', got {metric!r}")
    ants = _import_ants()
    _ants_seed(seed)
    with tempfile.TemporaryDirectory(prefix="bench_ants_") as tmp:
        out = ants.registration(_ants_image(fixed, fixed_grid), _ants_image(moving, moving_grid),
                                type_of_transform=kind, aff_metric=metric, outprefix=os.path.join(tmp, "r_"))
        return _ants_linear_matrix(out["fwdtransforms"][-1], fixed_grid.ndim)


def ants_syn(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
             metric: str = "MI", seed: int = 0) -> torch.Tensor:
    """ANTs affine + SyN; returns the whole fixed -> moving map as ``ddf_mm`` ``(D, *S_fixed)`` float64 LPS mm.

    Args:
        metric: ``"MI"`` (``type_of_transform="SyN"``, Mattes MI) or ``"CC"`` (``syn_metric="CC",
            syn_sampling=2``).
    """
    if metric not in ("MI", "CC"):
        raise ValueError(f"ants_syn(): 'metric' must be 'MI' or 'CC', got {metric!r}")
    ants = _import_ants()
    _ants_seed(seed)
    fixed_img = _ants_image(fixed, fixed_grid)
    kwargs = {"syn_metric": "CC", "syn_sampling": 2} if metric == "CC" else {}
    with tempfile.TemporaryDirectory(prefix="bench_ants_") as tmp:
        out = ants.registration(fixed_img, _ants_image(moving, moving_grid), type_of_transform="SyN",
                                outprefix=os.path.join(tmp, "s_"), **kwargs)
        # compose affine + warp into one displacement field on the fixed grid (physical LPS vectors)
        path = ants.apply_transforms(fixed_img, _ants_image(moving, moving_grid), out["fwdtransforms"],
                                     compose=os.path.join(tmp, "c_"))
        field = ants.image_read(path).numpy()  # (*S, D), components (x, y, z) LPS mm
    return torch.as_tensor(np.moveaxis(field, -1, 0).astype(np.float64))


def _itk_image(array: np.ndarray, grid: ImageGrid):
    itk = _import_itk()
    origin, spacing, direction = grid.itk_geometry()
    # itk numpy views are in reverse (z, y, x) order: transpose so ITK index (i, j, k) = array[i, j, k]
    img = itk.image_from_array(np.ascontiguousarray(np.asarray(array, dtype=np.float32).T))
    img.SetOrigin([float(v) for v in origin])
    img.SetSpacing([float(v) for v in spacing])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return img


def _fit_affine(points: np.ndarray, mapped: np.ndarray) -> torch.Tensor:
    """Least-squares ``(D + 1, D + 1)`` map sending ``points`` ``(P, D)`` to ``mapped``."""
    d = points.shape[1]
    design = np.c_[points, np.ones(len(points))]
    coef, *_ = np.linalg.lstsq(design, mapped, rcond=None)
    out = np.eye(d + 1)
    out[:d, :] = coef.T
    return torch.as_tensor(out)


def elastix_rigid(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
                  starts=(-0.4, 0.0, 0.4), resolutions: int = 4, iterations: int = 1024, threads: int = 1,
                  seed: int = 0) -> tuple[torch.Tensor, dict]:
    """elastix rigid MI from several start rotations (2D); the lowest final metric value wins.

    Returns:
        ``(matrix_mm, info)``: the fixed -> moving LPS mm map ``(3, 3)`` float64 (the initial
        rotation included, read back through transformix so no composition rule is assumed) and
        ``{"start_rad", "final_metric", "metrics"}``.
    """
    if fixed_grid.ndim != 2:
        raise ValueError(f"elastix_rigid(): only 2D images are supported here, got {fixed_grid.ndim}D")
    itk = _import_itk()
    fixed_img, moving_img = _itk_image(fixed, fixed_grid), _itk_image(moving, moving_grid)
    center = fixed_grid.center_mm().numpy()
    best = None
    metrics = []
    with tempfile.TemporaryDirectory(prefix="bench_elastix_") as tmp:
        for n, angle in enumerate(starts):
            params = itk.ParameterObject.New()
            pm = params.GetDefaultParameterMap("rigid", int(resolutions))
            pm["MaximumNumberOfIterations"] = [str(int(iterations))]
            pm["WriteResultImage"] = ["false"]
            pm["RandomSeed"] = [str(int(seed) + 1)]
            params.AddParameterMap(pm)
            run_dir = os.path.join(tmp, f"start{n}")
            os.makedirs(run_dir)
            init = os.path.join(run_dir, "init.txt")
            with open(init, "w") as fh:
                fh.write('(Transform "EulerTransform")\n(NumberOfParameters 3)\n'
                         f"(TransformParameters {float(angle)!r} 0.0 0.0)\n"
                         f"(CenterOfRotationPoint {float(center[0])!r} {float(center[1])!r})\n"
                         '(InitialTransformParametersFileName "NoInitialTransform")\n(HowToCombineTransforms "Compose")\n'
                         "(FixedImageDimension 2)\n(MovingImageDimension 2)\n")
            _, result = itk.elastix_registration_method(
                fixed_img, moving_img, parameter_object=params, initial_transform_parameter_file_name=init,
                log_to_file=True, log_to_console=False, output_directory=run_dir, number_of_threads=int(threads))
            with open(os.path.join(run_dir, "elastix.log")) as fh:
                found = re.findall(r"Final metric value\s*=\s*([-+0-9.eE]+)", fh.read())
            value = float(found[-1]) if found else math.inf
            metrics.append(value)
            if best is None or value < best[0]:
                # output_directory: transformix otherwise writes deformationField.nii into the working directory
                field = itk.array_from_image(itk.transformix_deformation_field(
                    moving_img, result, output_directory=run_dir, log_to_console=False))
                best = (value, angle, np.transpose(field, (1, 0, 2)))  # -> (i, j, component)
    points = fixed_grid.mm_points(dtype=torch.float64).numpy()
    mapped = points + best[2].reshape(-1, 2)
    return _fit_affine(points, mapped), {"start_rad": best[1], "final_metric": best[0], "metrics": metrics}


def matrix_to_ddf_mm(matrix_mm: torch.Tensor, grid: ImageGrid) -> torch.Tensor:
    """``(D, *S)`` float64 displacement of a homogeneous fixed -> moving map on ``grid`` (LPS mm)."""
    points = grid.mm_points(dtype=torch.float64)
    return (apply_affine(torch.as_tensor(matrix_mm, dtype=torch.float64), points) - points).T.reshape(
        (grid.ndim,) + grid.shape)
