"""Output of a benchmark run: markdown tables, the JSON of every case, QC figures, machine details."""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..atomic import write_text as atomic_write_text

__all__ = ["markdown_table", "fmt", "write_json", "write_text", "machine_info"]


def fmt(value, digits: int = 3) -> str:
    """A table cell: NaN/None as ``n/a``, floats with ``digits`` significant decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (cells formatted with :func:`fmt`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _clean(obj):
    """JSON-safe copy: numpy/torch scalars and arrays to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON through a temporary file renamed into place."""
    return write_text(path, json.dumps(_clean(payload), indent=1))


def write_text(path, text: str) -> Path:
    return atomic_write_text(path, text)


def machine_info() -> dict:
    """CPU model and count, Python / torch / ANTs / ITK versions, date (UTC)."""
    info = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    from importlib import metadata

    for dist in ("torch", "monai", "antspyx", "itk", "itk-elastix", "monai-inr-reg"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


