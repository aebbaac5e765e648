"""QC figures: the one place that draws registrations (the pipeline, the demo, the benchmarks and
the examples call it). Arrays in, a PNG written atomically (never a half-written file) out.

- :func:`write_qc_png`: one registration: fixed, moving before, warped with the fixed edges over it,
  a checkerboard, and the Jacobian determinant (3D: three orthogonal middle slices).
- :func:`write_comparison_png`: several methods on one pair: each warped image overlaid on the fixed one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .atomic import write_bytes

__all__ = ["write_qc_png", "write_comparison_png", "overlay_rgb"]


def _save(fig, path, *, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, buffer.getvalue())


def _unit(image: np.ndarray, mask=None) -> np.ndarray:
    values = image[mask] if mask is not None and mask.any() else image
    lo, hi = np.percentile(values, [1.0, 99.0])
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def _edges(image: np.ndarray) -> np.ndarray:
    """A boolean edge map of a ``[0, 1]`` slice: gradient magnitude above its 90th percentile."""
    gy, gx = np.gradient(image)
    magnitude = np.hypot(gx, gy)
    return magnitude > max(np.percentile(magnitude, 90), 1e-6)


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    """2D: the image; 3D: the middle slice across each array axis (three orthogonal views)."""
    if volume.ndim == 2:
        return [volume]
    return [np.take(volume, volume.shape[axis] // 2, axis=axis) for axis in range(3)]


def write_qc_png(path, fixed, moving_before, warped, det, *, title: str = "", origin: str = "lower",
                 note: str = "") -> Path:
    """QC figure: per view, fixed | moving (before) | warped with the fixed image's edges over it |
    checkerboard after | Jacobian determinant.

    2D images make one row; 3D volumes three rows (middle slices across the three array axes).
    Arrays ``(*S_fixed)`` on the fixed grid, displayed transposed (first array axis horizontal).
    ``note`` (e.g. the error against a known answer) goes under the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = list(zip(*(_slices(np.asarray(a, dtype=np.float32)) for a in (fixed, moving_before, warped, det))))
    fig, axes = plt.subplots(len(views), 5, figsize=(15.0, 3.3 * len(views)), squeeze=False)
    for row, (f, m, w, j) in zip(axes, views):
        f, m, w = _unit(f), _unit(m), _unit(w)
        for ax, (img, name) in zip(row, [(f, "fixed"), (m, "moving (before)"), (w, "warped, fixed edges"),
                                         (_checkerboard(f, w), "checkerboard after")]):
            ax.imshow(img.T, cmap="gray", origin=origin, vmin=0, vmax=1)
            ax.set_title(name, fontsize=9)
        edges = np.ma.masked_where(~_edges(f).T, np.ones_like(f.T))
        row[2].imshow(edges, cmap="autumn", origin=origin, alpha=0.8, interpolation="nearest")
        shown = row[4].imshow(j.T, cmap="RdBu_r", origin=origin, vmin=0.0, vmax=2.0)
        if (j <= 0).any():
            row[4].contour((j <= 0).T.astype(float), levels=[0.5], colors="k", linewidths=0.8, origin=origin)
        row[4].set_title(f"Jacobian det. ({100.0 * float((j <= 0).mean()):.2f} % <= 0)", fontsize=9)
        fig.colorbar(shown, ax=row[4], fraction=0.046)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title + (f"\n{note}" if note else ""))
    fig.tight_layout()
    return _save(fig, path, dpi=72)


def overlay_rgb(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """A 2D colour overlay: fixed in green, moving in magenta (grey where they agree), ``(H, W, 3)``."""
    f, m = _unit(fixed), _unit(moving)
    return np.stack([m, f, m], axis=-1)


def _middle_slice(image: np.ndarray) -> np.ndarray:
    # a 3D volume shows its middle slice along the last axis; arrays are shown with axis 0 as rows
    return image[..., image.shape[-1] // 2] if image.ndim == 3 else image


def write_comparison_png(path, fixed: np.ndarray, moving: np.ndarray, warped: dict[str, np.ndarray], *, title: str = "") -> Path:
    """One QC figure: fixed, moving (overlaid on fixed), and each method's warped moving overlaid on fixed.

    Args:
        fixed, moving: ``(*S)`` arrays (3D: the middle slice of the last axis is shown).
        warped: ``{method label: (*S_fixed) moving warped onto the fixed grid}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = _middle_slice(fixed)
    panels = [("fixed", np.stack([_unit(f)] * 3, -1))]
    if moving.shape == fixed.shape:
        panels.append(("before (fixed green, moving magenta)", overlay_rgb(f, _middle_slice(moving))))
    panels += [(label, overlay_rgb(f, _middle_slice(img))) for label, img in warped.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (label, img) in zip(axes[0], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=90)
