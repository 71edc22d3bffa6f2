"""The benchmark suite's quick mode runs end to end and writes its report (a smoke test: no speed is
asserted here; figures belong in docs/performance.md, measured by the full run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_quick_benchmark_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=850)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["quick"] is True
    assert report["errors"] == {}
    assert set(report["stages"]) == {"sdk", "ingest", "up", "soak", "queries", "memory"}
    assert report["machine"]["cores"] >= 1
    assert report["versions"]["mlflow"] == "3.17.2"
    # Every stage measured something real: traces went all the way through on both sides.
    ingest = report["stages"]["ingest"]
    runs = ingest["tracehouse"]["runs"]
    assert all(run["complete"] for run in runs), [run["stored"] for run in runs]
    assert all(run["stored"] > 0 for run in ingest["mlflow"]["runs"])
    soak = report["stages"]["soak"]
    assert soak["complete"], soak["stored"]
    assert soak["freshness_ms"]["n"] >= 1
    assert report["stages"]["sdk"]["tracehouse"]["added_p50_us"]["median"] > 0
    assert set(report["stages"]["queries"]["search"]) >= {"user", "session"}
    up = report["stages"]["up"]
    for run in [*(r for runs in up["paced"].values() for r in runs), *up["flat"]["runs"]]:
        assert run["complete"], run["stored"]
        assert run["up_exit_code"] == 0, run
    paced = next(iter(up["paced"].values()))[0]
    assert paced["freshness_ms"]["n"] >= 1, paced  # markers were found through the search API
    assert report["stages"]["sdk"]["tracehouse"]["amortized_us"]["median"] > 0
    memory = report["stages"]["memory"]["runs"]
    assert set(memory) == {"zstd", "none"}
    for run in (run for runs in memory.values() for run in runs):
        assert run["complete"], run
        assert run["traces"] > 0, run
        assert run["peak_mib"] > 0, run
    md = (out / "report.md").read_text()
    assert md.startswith("# tracehouse benchmark report (quick mode")
    for figure in ("SDK cost per traced call", "End-to-end ingest", "Freshness", "Search, user", "Users table",
                   "Session timeline", "Embedded broker memory", "`up` paced", "Through `tracehouse up`"):  # fmt: skip
        assert figure in md, figure
