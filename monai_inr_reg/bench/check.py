"""``monai-inr-reg bench SUITE --check-recorded RECORD.json``: rerun a slice of a recorded suite and
fail when our figures moved beyond noise, so that the tables in the docs cannot go stale silently.

The slice: the first ``--cases`` cases (default 1) of every case group in the record, our methods
only (``ours*`` and ``paper-*``), with the record's options (seed, data sets, warps, iterations
scale). Each fresh case is compared with the recorded case of the same group, case (and level) and
method on the suite's figures, within the tolerances of :data:`FIGURES`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["FIGURES", "load_record", "compare", "our_methods"]

# suite -> [(figure, absolute tolerance, relative tolerance)]: beyond both, the figure moved
FIGURES = {
    "rigid-levels": [("success", 0.0, 0.0), ("relative_error", 0.002, 0.0)],
    "deformable2d": [("epe_median_mm", 0.05, 0.05), ("folding_percent", 0.01, 0.0)],
    "brain3d": [("dice", 0.01, 0.0), ("folding_percent", 0.05, 0.0)],
    "multimodal3d": [("epe_median_mm", 0.05, 0.05), ("gland_dice", 0.05, 0.0)],
}


def load_record(path, suite: str) -> dict:
    """The recorded payload of ``suite`` (a ``SUITE.json`` the bench wrote)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--check-recorded: {str(path)!r} does not exist")
    payload = json.loads(path.read_text())
    if payload.get("suite") != suite:
        raise ValueError(f"--check-recorded: {str(path)!r} records suite {payload.get('suite')!r}, not {suite!r}")
    return payload


def our_methods(cases: list[dict]) -> tuple[str, ...]:
    """The methods of ours in recorded cases, in their recorded order."""
    return tuple(dict.fromkeys(c["method"] for c in cases if c["method"].startswith(("ours", "paper"))))


def _key(case: dict) -> tuple:
    return case["group"], case["case"], case.get("level"), case["method"]


def _moved(figure: str, recorded, fresh, absolute: float, relative: float) -> bool:
    if isinstance(recorded, bool) or isinstance(fresh, bool):
        return bool(recorded) != bool(fresh)
    if recorded is None or fresh is None:
        return (recorded is None) != (fresh is None)
    recorded, fresh = float(recorded), float(fresh)
    if math.isnan(recorded) or math.isnan(fresh):
        return math.isnan(recorded) != math.isnan(fresh)
    return abs(fresh - recorded) > max(absolute, relative * abs(recorded))


def compare(suite: str, recorded: list[dict], fresh: list[dict]) -> tuple[list[list], bool]:
    """Rows ``[group, case, method, figure, recorded, fresh, "ok" | "MOVED" | "not recorded"]`` and
    whether every fresh case of ours matches its record within :data:`FIGURES`."""
    by_key = {_key(c): c for c in recorded}
    rows, ok = [], True
    for case in fresh:
        if not case["method"].startswith(("ours", "paper")):
            continue
        label = case["case"] if case.get("level") is None else f"L{case['level']} #{case['case']}"
        old = by_key.get(_key(case))
        if old is None:
            rows.append([case["group"], label, case["method"], "-", "-", "-", "not recorded"])
            ok = False
            continue
        for figure, absolute, relative in FIGURES[suite]:
            if figure not in old and figure not in case:
                continue
            moved = _moved(figure, old.get(figure), case.get(figure), absolute, relative)
            ok = ok and not moved
            rows.append([case["group"], label, case["method"], figure, old.get(figure), case.get(figure),
                         "MOVED" if moved else "ok"])
    return rows, ok
