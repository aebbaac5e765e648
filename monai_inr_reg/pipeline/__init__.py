"""Register many pairs and write their outputs: the engine of the bundle, the command line and torchrun.

Three parts: :mod:`.datalist` (which pairs, their folders, and when earlier outputs are reusable),
:mod:`.writers` (the files a pair writes, the metrics table) and :mod:`.run` (the loop).

Per pair, into ``output_dir/<pair id>/``, the outputs chosen with ``outputs=`` (default: warped
image, warped labels, ITK ``.h5``, QC figure, metrics; the full list is in :mod:`.writers`), every
file written to a unique temporary name and renamed into place, and last ``done.json``: the pair's
metrics row, its settings and its file list. A pair is complete when ``done.json`` exists, its
settings (input file contents, preset, overrides, seed, device, outputs) match the run's, and
every listed file is present with its size; a rerun skips it, and redoes any other pair.

A failing pair writes ``error.json`` instead (its row with the error) and the others go on.
``output_dir/metrics.csv`` and ``metrics.json`` hold one row per pair folder in ``output_dir``
(pairs of earlier commands into the same folder keep theirs), rebuilt from the per-pair records
under a file lock, so rows are never duplicated nor lost.
"""

from .datalist import load_datalist
from .run import PairFailures, check_pair, parse_labels, register_pair, run_datalist, run_pairs
from .writers import DEFAULT_OUTPUTS, OUTPUTS, ROW_FIELDS, save_nifti, write_metrics, write_qc_png

__all__ = [
    "ROW_FIELDS", "OUTPUTS", "DEFAULT_OUTPUTS", "PairFailures", "load_datalist", "check_pair", "parse_labels",
    "register_pair", "run_pairs", "write_metrics", "run_datalist", "save_nifti", "write_qc_png",
]
