"""``bench SUITE --check-recorded``: a fresh slice of a recorded suite against the record."""

from __future__ import annotations

import json

from monai_inr_reg.bench import main
from monai_inr_reg.bench.check import compare, our_methods


def case(group="g", index=0, method="ours", epe=1.0):
    return {"group": group, "case": index, "method": method, "epe_median_mm": epe, "folding_percent": 0.0}


def test_compare_flags_a_figure_that_moved_beyond_noise():
    recorded = [case(), case(index=1, epe=2.0), case(method="ants-syn", epe=3.0)]
    rows, ok = compare("deformable2d", recorded, [case(epe=1.03), case(method="ants-syn", epe=9.0)])
    assert ok and [r[-1] for r in rows] == ["ok", "ok"]  # 0.03 mm is noise; baselines are not checked
    rows, ok = compare("deformable2d", recorded, [case(epe=1.2)])
    assert not ok and rows[0][3:] == ["epe_median_mm", 1.0, 1.2, "MOVED"]
    rows, ok = compare("deformable2d", recorded, [case(index=5)])
    assert not ok and rows[0][-1] == "not recorded"
    assert our_methods(recorded + [case(method="paper-deformable")]) == ("ours", "paper-deformable")


def test_check_recorded_passes_on_its_own_record_and_fails_on_a_stale_one(data_dir, tmp_path, capsys):
    quick = ["--data-dir", str(data_dir), "--datasets", "brainweb", "--cases", "1", "--methods", "identity,ours",
             "--iterations-scale", "0.1", "--qc", "0"]
    assert main(["deformable2d", *quick, "--out", str(tmp_path / "record")]) == 0
    record = tmp_path / "record" / "deformable2d.json"
    check = ["deformable2d", "--data-dir", str(data_dir), "--check-recorded", str(record), "--out", str(tmp_path / "fresh")]
    capsys.readouterr()
    assert main(check) == 0  # same code, same seed, same options (taken from the record)
    assert "unchanged within noise" in capsys.readouterr().out
    payload = json.loads(record.read_text())
    for rec in payload["cases"]:
        if rec["method"] == "ours":
            rec["epe_median_mm"] += 0.5  # a table that no longer holds
    record.write_text(json.dumps(payload))
    assert main(check) == 1
    assert "MOVED" in capsys.readouterr().out
    assert main(["brain3d", "--data-dir", str(data_dir), "--check-recorded", str(record)]) == 2  # another suite's record
