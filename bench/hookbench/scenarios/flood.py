"""flood: one valid sender (wrk -t1 -c1, signed unique deploys) alone, then
again while bench/flood.lua sends forged signatures at c32 to the same port:
the valid sender's p99 both times, the flood's rate, and the ledger rows the
flood left (capped by store.max_unauthenticated_per_second). Every forged
delivery must be answered 401 and every valid one 2xx.
"""

import os
import sqlite3
import subprocess
import time

from ..core import commas, duration_seconds, ms, say
from . import load


def run_flood(cfg, run, shape, table):
    say("flood: a valid sender's latency, alone and during a forged-signature flood (c32)")
    server = run.start_server("flood")
    try:
        pool = run.pool("flood", max(load.lines_for(cfg, "c1") * 2, 2000), shape)
        quiet = run.wrk(server, 1, 1, cfg.duration, pool, pool.take(pool.count // 2), "flood")
        seconds = duration_seconds(cfg.duration)
        # The flood starts a little before the valid sender and ends after it.
        lead = 0.5 if cfg.smoke else 1
        out_path = run.path("flood", "wrk-flood.txt")
        with open(out_path, "wb") as out:
            flooder = run.spawn(["wrk", "-t1", "-c32", "-d%ds" % (seconds + 2 * lead), "-s", run.flood_lua,
                                 server.ingest + "/pelorus/webhook"], stdout=out, stderr=subprocess.STDOUT)
        time.sleep(lead)
        busy = run.wrk(server, 1, 1, cfg.duration, pool, pool.take(pool.count - pool.cursor), "flood")
        rc = flooder.wait()
        run.processes.remove(flooder)
        with open(out_path, errors="replace") as out:
            text = out.read()
        if rc != 0:
            run.fail("the flooding wrk failed:\n" + text)
        statuses = {}
        rps = 0.0
        for line in text.splitlines():
            if line.startswith("bench-result flood_"):
                code, _, n = line[len("bench-result flood_"):].partition("=")
                statuses[code] = int(n)
            if line.startswith("Requests/sec:"):
                rps = float(line.split()[1])
        database = os.path.join(server.data_dir, "hookgauge.db")
        db = sqlite3.connect("file:%s?mode=ro" % database, uri=True)
        rows = db.execute("SELECT COUNT(*) FROM deliveries WHERE authenticated = 0").fetchone()[0]
        db.close()
    finally:
        server.stop()
    other = {code: n for code, n in statuses.items() if code != "401"}
    if other:
        run.fail("flood: answers other than 401: %s" % other)
    if busy["non2xx"] or quiet["non2xx"]:
        run.fail("flood: the valid sender got %d non-2xx answers" % (busy["non2xx"] + quiet["non2xx"]))
    table.row("flood: valid sender (c1) p99 alone / during a forged flood",
              "%s / %s ms" % (ms(quiet.p(99)), ms(busy.p(99))))
    table.row("  valid sender req/s during the flood", commas(busy.rps))
    table.row("  flood req/s, answered 401, ledger rows it added",
              "%s, %s, %s" % (commas(rps), commas(statuses.get("401", 0)), commas(rows)), "", "all 401",
              "ok" if not other else "FAILED")
