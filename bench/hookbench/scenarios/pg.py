"""pg1 and pg2: the PostgreSQL store, on S1 or S2 traffic.

  pg1  c32's load (wrk -t2 -c32, the same pool and duration) against one
       server on a fresh database: req/s, latencies, and every acknowledged
       delivery stored (SELECT COUNT(*) FROM deploys).
  pg2  two servers on one fresh database, the load split between them: two
       wrk processes in parallel, each -t1 -c16 against its own replica with
       a disjoint half of the pool. The combined req/s, each replica's p99,
       acked by both <= rows stored, and both replicas' /metrics agreeing on
       the sum of hookgauge_deployments_total (and on the rows) within ~2 s
       of the end of the load, the time the change feed gets.

On a 2-core machine the replicas, PostgreSQL and wrk share the same cores:
no target is set, and pg2's sum is not a measure of how replicas scale.
"""

import os
import time

from ..core import commas, ms, note, say
from ..postgres import Cluster
from . import load


def cluster(run):
    return run.postgres or Cluster(run)


def pg1(cfg, run, shape, pool, table):
    pg = cluster(run)
    database = "bench_pg1_%s" % shape.name.lower()
    say("%s pg1: one server on PostgreSQL %s, wrk -t%d -c%d -d%s"
        % (shape.name, pg.version, cfg.threads, cfg.connections, cfg.duration))
    note("this machine has %d CPU(s), shared by hookgauge, PostgreSQL and wrk: no target is set" % os.cpu_count())
    url = pg.new_database(database)
    server = run.start_server(shape.name + "-pg1", store_url=url, password_file=pg.password_file)
    try:
        before = pg.statements(database)
        result = run.wrk(server, cfg.threads, cfg.connections, cfg.duration, pool, (0, pool.count), "pg1")
        rows = pg.settle(database)
        after = pg.statements(database)
        counted = server.settle().stored()
    finally:
        server.stop()
    acked = result["s2xx"]
    note("req/s %s, p50 / p99 / p99.9 %s / %s / %s ms; acked %s, rows %s, hookgauge_deployments_total %s"
         % (commas(result.rps), ms(result.p(50)), ms(result.p(99)), ms(result.p(99.9)), commas(acked),
            commas(rows), commas(counted)))
    for warning in result.warnings():
        note(warning)
    if acked > rows:
        run.fail("%s pg1: acked %d > stored %d" % (shape.name, acked, rows))
    table.row("pg1: PostgreSQL %s, one replica, wrk -t%d -c%d req/s" % (pg.version, cfg.threads, cfg.connections),
              commas(result.rps))
    table.row("  p50 / p99 / p99.9", "%s / %s / %s ms" % (ms(result.p(50)), ms(result.p(99)), ms(result.p(99.9))))
    table.correctness("  acked / stored (rows in deploys)", acked, rows)
    round_trips(table, pg, database, acked, before, after)


def pg2(cfg, run, shape, pool, table):
    pg = cluster(run)
    database = "bench_pg2_%s" % shape.name.lower()
    threads = max(cfg.threads // 2, 1)
    connections = max(cfg.connections // 2, threads)
    say("%s pg2: two servers on one PostgreSQL %s database, each loaded by wrk -t%d -c%d -d%s with half the pool"
        % (shape.name, pg.version, threads, connections, cfg.duration))
    note("this machine has %d CPU(s), shared by hookgauge, PostgreSQL and wrk: no target is set" % os.cpu_count())
    url = pg.new_database(database)
    # Replica 1 first: it migrates the new database before replica 2 opens it.
    servers = [run.start_server(shape.name + "-pg2-1", store_url=url, password_file=pg.password_file)]
    try:
        servers.append(run.start_server(shape.name + "-pg2-2", store_url=url, password_file=pg.password_file))
        before = pg.statements(database)
        half = pool.count // 2
        ranges = [(0, half), (half, pool.count - half)]
        background = [run.wrk(server, threads, connections, cfg.duration, pool, lines, "pg2", background=True)
                      for server, lines in zip(servers, ranges)]
        results = [run.wrk_result(process, path, "pg2") for process, path in background]
        acked = sum(r["s2xx"] for r in results)
        rows = pg.settle(database)
        after = pg.statements(database)
        # Each replica's view follows the other's commits through the change
        # feed: ~2 s for both to agree with each other and with the rows.
        for attempt in range(11):
            sums = [server.scrape().stored() for server in servers]
            if sums[0] == sums[1] == rows:
                break
            if attempt < 10:
                time.sleep(0.2)
    finally:
        for server in servers:
            server.stop()
    rps = sum(r.rps for r in results)
    note("combined req/s %s (%s + %s); p99 %s / %s ms; acked %s, rows %s; deployments_total %s / %s (after ~%d ms)"
         % (commas(rps), commas(results[0].rps), commas(results[1].rps), ms(results[0].p(99)),
            ms(results[1].p(99)), commas(acked), commas(rows), commas(sums[0]), commas(sums[1]), attempt * 200))
    if acked > rows:
        run.fail("%s pg2: acked %d > stored %d" % (shape.name, acked, rows))
    agree = sums[0] == sums[1] == rows
    if not agree:
        run.fail("%s pg2: hookgauge_deployments_total %d (replica 1) / %d (replica 2), the database holds %d"
                 % (shape.name, sums[0], sums[1], rows))
    round_trips(table, pg, database, acked, before, after)
    table.row("pg2: two replicas, 2x wrk -t%d -c%d req/s (sum)" % (threads, connections),
              "%s (%s + %s)" % (commas(rps), commas(results[0].rps), commas(results[1].rps)))
    table.row("  p99 replica 1 / replica 2", "%s / %s ms" % (ms(results[0].p(99)), ms(results[1].p(99))))
    table.correctness("  acked by both / stored (rows in deploys)", acked, rows)
    table.row("  deployments_total on replica 1 / 2", "%s / %s" % (commas(sums[0]), commas(sums[1])), "",
              "equal, = rows", "ok" if agree else "FAILED")


def round_trips(table, pg, database, acked, before, after):
    """Statements (each a round trip) and transactions per delivery during
    the load, from pg_stat_statements and pg_stat_database: a batch is one
    transaction of the group commit. The followers' feed reads and the
    background tasks are counted too."""
    statements, commits = after[0] - before[0], after[1] - before[1]
    if acked <= 0 or commits <= 0:
        return
    note("round trips: %s statements in %s transactions for %s acked deliveries: %.2f per delivery, "
         "%.1f deliveries and %.1f statements per transaction"
         % (commas(statements), commas(commits), commas(acked), statements / acked, acked / commits,
            statements / commits))
    if os.environ.get("BENCH_VERBOSE") == "1":
        for calls, query in pg.top_statements(database):
            note("  %10s  %s" % (calls, query))
    table.row("  round trips per delivery (statements; deliveries per batch)",
              "%.2f (%.1f)" % (statements / acked, acked / commits))


def run_pg(cfg, run, shape, names, table):
    if shape.kind != "fresh":
        note("%s: pg1 and pg2 run on S1 and S2 only; skipped" % shape.name)
        return
    pool = run.pool(shape.name + "-pg", cfg.pool, shape)
    if "pg1" in names:
        pg1(cfg, run, shape, pool, table)
    if "pg2" in names:
        pg2(cfg, run, shape, pool, table)
