"""How long ``mobilenets pick --quick`` takes, start to end, as a user runs it.

    .venv/bin/python benchmarks/pick_quick.py               # about a minute on 2 cores

Runs ``mobilenets pick --budget-ms 5 --quick --json FILE`` in a fresh process (Python's start
and imports included) and records its wall-clock seconds beside pick's own JSON (whose
``wall_seconds`` is the timing alone). Issue 29 asks that ``--quick`` keep it under a minute.
Writes ``benchmarks/results/pick_quick.json``; docs/deployment.md's table is generated from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pick_quick.json"
PICK = ["pick", "--budget-ms", "5", "--quick"]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pick-quick-") as tmp:
        out = Path(tmp) / "pick.json"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mobilenets", *PICK, "--json", str(out)], check=True)
        process_seconds = time.perf_counter() - start
        report = json.loads(out.read_text())
    record = {**report, "command": "python benchmarks/pick_quick.py",
              "pick_command": "mobilenets " + " ".join(PICK), "process_seconds": process_seconds}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"mobilenets {' '.join(PICK)}: {process_seconds:.1f} s start to end "
          f"({report['wall_seconds']:.1f} s timing); wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
