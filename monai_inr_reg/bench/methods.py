"""The methods a suite compares: ours (through :func:`monai_inr_reg.register`), ANTs, elastix, the peers
(ConvexAdam, FireANTs), identity.

Each method takes a fixed and a moving image with their grids and returns a :class:`MethodOutput`
holding the recovered map fixed -> moving (LPS mm) as a matrix and/or a displacement field on the
fixed grid, with its wall time and peak memory. Suites score the output; nothing here knows the
ground truth.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import load_preset
from ..core.grid import ImageGrid
from . import baselines, peers

__all__ = ["MethodOutput", "RIGID_METHODS", "DEFORMABLE_METHODS", "run_method", "method_label", "PeakRSS"]

RIGID_METHODS = ("identity", "ours-rigid", "ours-near-rigid", "paper-rigid", "ants", "elastix")
DEFORMABLE_METHODS = ("identity", "ours", "paper-deformable", "ants-syn", "ants-syncc", "convexadam", "fireants",
                      "ours-affine", "ants-affine")  # the last two: single-modal, linear (the label suites)


@dataclass
class MethodOutput:
    """What one method recovered for one pair.

    Attributes:
        matrix_mm: ``(D + 1, D + 1)`` float64 fixed LPS mm -> moving LPS mm, when the result is
            exactly parametric (else None).
        ddf_mm: ``(D, *S_fixed)`` LPS mm displacement of the whole map on the fixed grid (None for
            purely parametric results: build it from ``matrix_mm`` when needed).
        seconds: wall time of the call (including file I/O of the baselines).
        peak_mb: peak resident memory increase during the call, MiB (sampled every 20 ms).
        info: method details for the JSON (settings, elastix start, ...).
    """

    matrix_mm: torch.Tensor | None = None
    ddf_mm: torch.Tensor | None = None
    seconds: float = 0.0
    peak_mb: float = 0.0
    info: dict = field(default_factory=dict)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no sampling
        return 0


class PeakRSS:
    """Context manager: peak resident set size above the starting value, sampled in a thread (MiB)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0

    def __enter__(self):
        self._start = _rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mb = (self._peak - self._start) / 2.0 ** 20
        return False


def method_label(name: str, *, multimodal: bool) -> str:
    """The table label of a method (says which metric a baseline used)."""
    if name == "ants":
        return "ANTs rigid (Mattes MI)" if multimodal else "ANTs rigid (MeanSquares)"
    return {
        "identity": "no registration",
        "ours-rigid": "ours, exact rigid",
        "ours-near-rigid": "ours, near-rigid hash (paper's motion net)",
        "paper-rigid": "the paper as published (preset paper-rigid)",
        "paper-deformable": "the paper as published (preset paper-deformable)",
        "elastix": "elastix rigid MI, 3 starts",
        "ours": "ours",
        "ours-affine": "ours, affine (preset affine)",
        "ants-affine": "ANTs affine (Mattes MI)",
        "ants-syn": "ANTs SyN (Mattes MI)",
        "ants-syncc": "ANTs SyN (CC, syn_sampling=2)",
        "convexadam": "ConvexAdam (MIND-SSC, defaults)",
        "fireants": "FireANTs greedy (MI)" if multimodal else "FireANTs greedy (CC)",
    }.get(name, name)


def _ours(fixed, fixed_grid, moving, moving_grid, *, preset: str, seed: int, iterations_scale: float | None,
          overrides: dict) -> MethodOutput:
    from monai.data import MetaTensor

    from ..register import register

    def as_input(image, grid):
        tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None]
        return MetaTensor(tensor, affine=grid.affine_ras.clone())

    kwargs = dict(overrides)
    if iterations_scale is not None:
        kwargs["iterations_scale"] = float(iterations_scale)
    result = register(as_input(fixed, fixed_grid), as_input(moving, moving_grid), preset, seed=seed, progress=False,
                      **kwargs)
    out = MethodOutput(ddf_mm=result.ddf_mm.to(torch.float64),
                       info={"preset": preset, "overrides": kwargs, "motion": result.motion,
                             "final_loss": result.loss_history[-1] if result.loss_history else None,
                             "refined_from_start": bool(result.refined_from_start), "quality": result.quality,
                             "stages": result.stages, "field_seconds": result.stage_seconds.get("field")})
    if result.parametric:
        out.matrix_mm = result.matrix_mm.to(torch.float64)
    return out


def near_rigid_overrides(preset: str) -> dict:
    """Overrides of ``preset`` (a rigid preset) that put the paper's near-rigid hash motion in place of
    the exact rigid one: the image-net capture stage of the deformable presets' pose (the rigid presets
    have none) at the paper's 1000 iterations with the motion's levels fading in over 0.9 of it, on
    their coarse image net, then ``preset``'s classical stage on the hash motion (every table entry sampled)."""
    pose = load_preset("multimodal-deformable")
    capture, refine = pose["stages"][0], load_preset(preset)["stages"][-1]
    capture = {**capture, "name": "near_rigid", "motion": "near_rigid", "iterations": 1000, "final_learning_rate_factor": 0.1,
               "coarse_to_fine_share": 0.9}
    refine = {**refine, "motion": "near_rigid", "candidates": ["previous"], "schedule": "whole",
              "fixed_points_cover_table": True}
    return {"stages": [capture, refine], "image": pose["image"]}


def run_method(name: str, fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
               multimodal: bool, seed: int = 0, iterations_scale: float | None = None,
               threads: int = 1) -> MethodOutput:
    """Run one method on one pair.

    Args:
        name: a rigid method (``identity``, ``ours-rigid``, ``ours-near-rigid``, ``paper-rigid``,
            ``ants``, ``elastix``) or a deformable one (``identity``, ``ours``, ``paper-deformable``,
            ``ants-syn``, ``ants-syncc``, ``convexadam``, ``fireants``; single-modal and linear:
            ``ours-affine``, ``ants-affine``).
        fixed, moving: ``(*S_fixed)`` / ``(*S_moving)`` float arrays on ``fixed_grid`` / ``moving_grid``.
        multimodal: picks our preset (``multimodal-*``), ANTs' rigid metric (Mattes MI vs MeanSquares)
            and FireANTs' (MI vs CC).
        iterations_scale: passed to ``register`` as the override ``iterations_scale`` (None: preset's).

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in RIGID_METHODS + DEFORMABLE_METHODS:
        raise ValueError(f"run_method(): unknown method {name!r}; choose from {sorted(set(RIGID_METHODS + DEFORMABLE_METHODS))}")
    start = time.perf_counter()
    with PeakRSS() as mem:
        if name == "identity":
            out = MethodOutput(matrix_mm=torch.eye(fixed_grid.ndim + 1, dtype=torch.float64))
        elif name in ("ours-rigid", "ours-near-rigid"):
            preset = "multimodal-rigid" if multimodal else "rigid"
            overrides = near_rigid_overrides(preset) if name == "ours-near-rigid" else {}
            out = _ours(fixed, fixed_grid, moving, moving_grid, preset=preset, seed=seed,
                        iterations_scale=iterations_scale, overrides=overrides)
        elif name in ("paper-rigid", "paper-deformable"):
            out = _ours(fixed, fixed_grid, moving, moving_grid, preset=("multimodal-" if multimodal else "") + name,
                        seed=seed, iterations_scale=iterations_scale, overrides={})
        elif name == "ours-affine":
            if multimodal:
                raise ValueError("run_method(): 'ours-affine' runs the single-modal preset affine; this pair is multi-modal")
            out = _ours(fixed, fixed_grid, moving, moving_grid, preset="affine", seed=seed,
                        iterations_scale=iterations_scale, overrides={})
        elif name == "ants-affine":
            out = MethodOutput(matrix_mm=baselines.ants_affine(fixed, fixed_grid, moving, moving_grid, seed=seed),
                               info={"settings": baselines.ANTS_SETTINGS["ants-affine"]})
        elif name == "ours":
            preset = "multimodal-deformable" if multimodal else "deformable"
            out = _ours(fixed, fixed_grid, moving, moving_grid, preset=preset, seed=seed,
                        iterations_scale=iterations_scale, overrides={})
        elif name == "ants":
            metric = "mattes" if multimodal else "meansquares"
            out = MethodOutput(matrix_mm=baselines.ants_rigid(fixed, fixed_grid, moving, moving_grid, metric=metric,
                                                              seed=seed),
                               info={"settings": baselines.ANTS_SETTINGS["ants-rigid-mi" if multimodal else "ants-rigid-ms"]})
        elif name == "elastix":
            matrix, info = baselines.elastix_rigid(fixed, fixed_grid, moving, moving_grid, threads=threads, seed=seed)
            out = MethodOutput(matrix_mm=matrix, info={**info, "settings": baselines.ELASTIX_SETTINGS})
        elif name == "convexadam":
            start_mm = peers.start_matrix(fixed, fixed_grid, moving, moving_grid,
                                          "multimodal-deformable" if multimodal else "deformable")
            out = MethodOutput(ddf_mm=peers.convexadam(fixed, fixed_grid, moving, moving_grid, start_mm=start_mm),
                               info={"settings": peers.PEER_SETTINGS[name]})
        elif name == "fireants":
            out = MethodOutput(ddf_mm=peers.fireants(fixed, fixed_grid, moving, moving_grid, multimodal=multimodal),
                               info={"settings": peers.PEER_SETTINGS[name], "metric": "MI" if multimodal else "CC"})
        else:  # ants-syn / ants-syncc
            metric = "CC" if name == "ants-syncc" else "MI"
            out = MethodOutput(ddf_mm=baselines.ants_syn(fixed, fixed_grid, moving, moving_grid, metric=metric, seed=seed),
                               info={"settings": baselines.ANTS_SETTINGS[name]})
    out.seconds = time.perf_counter() - start
    out.peak_mb = mem.peak_mb
    return out


def method_available(name: str) -> tuple[bool, str]:
    """Whether ``name`` can run here, and why not."""
    if name in ("ants", "ants-syn", "ants-syncc", "ants-affine") and not baselines.ants_available():
        return False, "antspyx is not installed (pip install 'monai-inr-reg[bench]')"
    if name == "convexadam" and not peers.convexadam_available():
        return False, "convexadam is not installed (pip install 'monai-inr-reg[bench]')"
    if name == "fireants" and not peers.fireants_available():
        return False, "fireants is not installed (pip install 'monai-inr-reg[bench]')"
    if name == "elastix" and not baselines.elastix_available():
        return False, "itk-elastix is not installed (pip install 'monai-inr-reg[bench]')"
    if name.startswith("ours") or name.startswith("paper-"):
        try:
            # imported here, before any timing, as ANTs' module is: the first pair would otherwise
            # count monai.data's import (0.9-2 s, measured) as registration time
            from monai.data import MetaTensor  # noqa: F401

            from ..register import register  # noqa: F401
        except ImportError as err:
            return False, f"monai_inr_reg.register is not importable ({err})"
    return True, ""
