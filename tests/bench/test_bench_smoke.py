"""The benchmark harness must keep working: a seconds-long run on direct + guardproxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def test_quick_bench_prints_a_checked_table_per_scenario(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--targets", "direct,guardproxy",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (tmp_path / "quick.md").read_text()
    assert "FAILED" not in report
    for n in range(1, 8):
        assert f"### {n}. " in report
    # One guardproxy row per scenario table (after the summary), with no missing figure.
    tables = report[report.index("### 1. "):]
    rows = [line for line in tables.splitlines() if line.startswith("| guardproxy |")]
    assert len(rows) == 7
    missing = [row for row in rows if "n/a" in row]
    assert not missing, "a figure with no value (its table's row; the run's output follows):\n" + "\n".join(
        missing) + "\n" + proc.stdout[-3000:]
    assert "| direct |" in report
