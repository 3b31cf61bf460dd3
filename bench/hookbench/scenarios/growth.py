"""Growth (S5) and the soak.

S5: S2's traffic against a store pre-filled with BENCH_PREFILL (1M)
deliveries: a fresh server migrates its data dir and stops,
bench/fill_store.py --deliveries writes the ledger rows and deploys of S2's
50 apps over the 90 days before the last hour, then one server on that
store (its time to /readyz is reported) takes the load scenarios, each with
its own range of one pool.

soak (BENCH_SOAK=<duration>): one server (S5's pre-filled store unless
BENCH_SHAPES names another shape) under wrk -t2 -c32 for the whole
duration, in rounds of BENCH_SOAK_INTERVAL (1m): after each round a line
with the round's req/s, p99 and p99.9, VmRSS and the deliveries stored so
far (the smoke run soaks a fresh server: S5's pre-filled store is tested
by S5 itself). The next round's pool is written in the background (niced) while a
round runs, sized from the last round's rate; a round that runs out of
deliveries says so.
"""

import os
import subprocess
import sys
import time

from ..core import BenchError, commas, mib, ms, note, say
from ..pool import Pool
from . import load


def prefilled_server(cfg, run, shape, name):
    """A server on a store holding cfg.prefill deliveries of S2's shape."""
    say("%s: a store pre-filled with %s deliveries of 50 apps (bench/fill_store.py --deliveries)"
        % (shape.name, commas(cfg.prefill)))
    server = run.start_server(name, quiet=True)
    data_dir = server.data_dir
    server.stop()
    started = time.monotonic()
    filler = subprocess.run([sys.executable, os.path.join(run.bench_dir, "fill_store.py"),
                             "--db", os.path.join(data_dir, "hookgauge.db"),
                             "--deliveries", str(cfg.prefill), "--apps", str(shape.apps)],
                            capture_output=True, text=True)
    if filler.returncode != 0:
        raise BenchError("filling the store failed:\n" + filler.stderr)
    note("filled: %s in %.1f s" % (filler.stdout.strip(), time.monotonic() - started))
    started = time.monotonic()
    server = run.start_server(name, data_dir=data_dir, ready_timeout=300)
    ready = time.monotonic() - started
    stored = server.scrape().stored()
    note("start to /readyz %.1f s; hookgauge_deployments_total %s" % (ready, commas(stored)))
    if stored < cfg.prefill:
        run.fail("%s: the pre-filled store shows %d deployments, %d were written" % (shape.name, stored, cfg.prefill))
    return server, ready, stored


def session(cfg, run, shape, names, table, figures):
    server, ready, stored = prefilled_server(cfg, run, shape, shape.name + "-growth")
    try:
        rss, hwm = server.rss()
        needed = sum(load.lines_for(cfg, n) for n in names if not n.startswith("ceil")) * cfg.rounds
        pool = run.pool(shape.name, max(needed, 1000), shape)
        load.shared_server(cfg, run, shape, server, names, pool, figures)
    finally:
        server.stop()
    table.row("pre-filled deliveries (hookgauge_deployments_total at start)", commas(stored), "",
              ">= %s" % commas(cfg.prefill), "ok" if stored >= cfg.prefill else "FAILED")
    table.row("  start to /readyz, VmRSS once ready", "%.1f s, %s MiB" % (ready, mib(rss)))
    load.summarize(cfg, table, figures)


def soak(cfg, run, shape, table):
    """Rounds of c32 load on one server, a line per round."""
    total = cfg.soak_seconds
    interval = min(cfg.soak_interval, total)
    name = shape.name + "-soak"
    say("soak: %s traffic for %ds, wrk -t%d -c%d, a line every %ds"
        % (shape.name, total, cfg.threads, cfg.connections, interval))
    if shape.kind == "growth" and not cfg.smoke:
        server, _, _ = prefilled_server(cfg, run, shape, name)
    else:
        server = run.start_server(name)
    rounds = []
    pending = None
    try:
        count = max(1000, cfg.soak_rate * interval)
        pool = run.pool("soak-0", count, shape)
        started = time.monotonic()
        before = server.scrape().stored()
        acked_total = 0
        number = 0
        print("    %-9s %10s %10s %10s %10s %14s" % ("elapsed", "req/s", "p99 ms", "p99.9 ms", "VmRSS MiB",
                                                   "stored"), flush=True)
        while time.monotonic() - started < total - 0.5:
            number += 1
            seconds = min(interval, max(1, int(round(total - (time.monotonic() - started)))))
            # The next round's pool, written while this round runs.
            next_count = count
            if rounds:
                next_count = max(1000, int(rounds[-1]["rps"] * interval * 1.5))
            next_path = run.path("pools", "soak-%d.txt" % number)
            pending = (run.spawn([sys.executable, "-m", "hookbench.pool", "--shape", shape.name,
                                  "--count", str(next_count), "--secret", run.secret, "--out", next_path],
                                 stdout=subprocess.PIPE, nice=True,
                                 env=dict(os.environ, PYTHONPATH=run.bench_dir)), next_path, next_count)
            result = run.wrk(server, cfg.threads, cfg.connections, "%ds" % seconds, pool, pool.whole(), name)
            acked_total += result["s2xx"]
            rss, _ = server.rss()
            stored = server.scrape().stored()
            rounds.append({"rps": result.rps, "p99": result.p(99), "p999": result.p(99.9), "rss": rss})
            elapsed = int(time.monotonic() - started)
            print("    %02d:%02d:%02d  %10s %10s %10s %10s %14s%s"
                  % (elapsed // 3600, elapsed // 60 % 60, elapsed % 60, commas(result.rps), ms(result.p(99)),
                     ms(result.p(99.9)), mib(rss), commas(stored),
                     "  (pool used up)" if result["exhausted_threads"] else ""), flush=True)
            os.unlink(pool.path)
            process, path, next_count = pending
            out, _ = process.communicate()
            run.processes.remove(process)
            if process.returncode != 0:
                raise BenchError("writing the soak's next pool failed")
            pool = Pool(path, next_count, int(out.split()[1]))
            count = next_count
            pending = None
        settled = server.settle()
        stored = settled.stored() - before
    finally:
        if pending is not None:
            run.stop_process(pending[0], "pool writer")
        server.stop()
    if acked_total > stored:
        run.fail("soak: acked %d > stored %d" % (acked_total, stored))
    first, last = rounds[0], rounds[-1]
    table.row("soak: %d rounds of %ds, c32 req/s first / last round" % (len(rounds), interval),
              "%s / %s" % (commas(first["rps"]), commas(last["rps"])))
    table.row("  p99 first / last round", "%s / %s ms" % (ms(first["p99"]), ms(last["p99"])))
    table.row("  VmRSS first / last round", "%s / %s MiB" % (mib(first["rss"]), mib(last["rss"])))
    table.correctness("  acked / stored", acked_total, stored)
