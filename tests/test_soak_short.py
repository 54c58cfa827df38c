"""The soak test's short variant (the full one is `tests/soak/soak.py`, run by
hand): about 50 s of mixed inbound and submission load while mailgate is
killed with SIGKILL, stopped with SIGTERM or reloaded with SIGHUP every
1.2-2 s (about 30 times), restarted on the same data dir each time.

Every message acknowledged with 250 must reach the sink (lost = 0), fewer
than 1% may arrive twice, the spool's start-up replay must find no damage
after any restart, and its disk usage must be back to the baseline after the
queue drained and the server restarted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_soak_short_loses_nothing_across_thirty_kills(mailgate_bin, tmp_path):
    figures_path = tmp_path / "soak.json"
    p = subprocess.run(
        [sys.executable, str(HERE / "soak" / "soak.py"), "--minutes", "0.8",
         "--kill-interval", "1.2:2.0", "--inbound", "3", "--submission", "2",
         "--drain-timeout", "25", "--max-dup-rate", "0.01", "--min-accepted", "300",
         "--binary", str(mailgate_bin), "--workdir", str(tmp_path / "soak"),
         "--json", str(figures_path)],
        capture_output=True, text=True, timeout=150,
    )
    print(p.stdout[-4000:], p.stderr[-4000:])
    assert figures_path.exists(), f"the soak script did not finish (exit {p.returncode})"
    f = json.loads(figures_path.read_text())
    assert f["cycles"] >= 20, f"only {f['cycles']} kill/stop cycles"
    assert f["kill9"] >= 15, f
    assert f["accepted"] >= 300, f"too little load: {f['accepted']} accepted"
    assert f["recovered_total"] > 0, "the kills never caught queued mail"
    assert f["lost"] == 0, f"lost acknowledged mail: {f['lost_examples']}"
    assert f["still_queued"] == 0, f"not drained: {f['still_queued']} still queued"
    assert f["duplicate_rate"] < 0.01, f"{f['duplicates']} duplicates"
    assert f["consistency"] == "ok", f["consistency"]
    assert f["spool_bytes_end"] <= f["spool_bytes_baseline"] + 64 * 1024, f
    assert p.returncode == 0, p.stdout[-2000:]
