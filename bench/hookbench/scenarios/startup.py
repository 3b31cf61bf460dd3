"""startup: BENCH_STARTUP_EVENTS events (1M) of BENCH_STARTUP_APPS
applications (10k) written straight into a migrated store
(bench/fill_store.py --events), then the time from starting the server to
/readyz OK and its RSS (target <= 5 s).
"""

import os
import subprocess
import sys
import time

from ..core import BenchError, commas, mib, note, say


def run_startup(cfg, run, table):
    say("startup: %s stored events of %s applications, time to /readyz and RSS"
        % (commas(cfg.startup_events), commas(cfg.startup_apps)))
    server = run.start_server("startup", quiet=True)
    data_dir = server.data_dir
    server.stop()
    started = time.monotonic()
    filler = subprocess.run([sys.executable, os.path.join(run.bench_dir, "fill_store.py"),
                             "--db", os.path.join(data_dir, "hookgauge.db"),
                             "--events", str(cfg.startup_events), "--apps", str(cfg.startup_apps)],
                            capture_output=True, text=True)
    if filler.returncode != 0:
        raise BenchError("filling the store failed:\n" + filler.stderr)
    note("filled: %s in %.1f s" % (filler.stdout.strip(), time.monotonic() - started))
    started = time.monotonic()
    server = run.start_server("startup", data_dir=data_dir, ready_timeout=300)
    ready_ms = (time.monotonic() - started) * 1000
    rss, _ = server.rss()
    server.stop()
    note("start to /readyz %s ms, VmRSS %s MiB" % (commas(ready_ms), mib(rss)))
    table.check("start-up with %s events of %s applications, to /readyz"
                % (commas(cfg.startup_events), commas(cfg.startup_apps)), "%s ms" % commas(ready_ms),
                ready_ms, "<=", 5000, "<= 5,000 ms")
    table.row("  VmRSS once ready", "%s MiB" % mib(rss))
