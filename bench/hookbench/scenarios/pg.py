"""pg1, pg1c1 and pg2: the PostgreSQL store, on S1 or S2 traffic.

  pg1  c32's load (wrk -t2 -c32, the same pool and duration) against one
       server on a fresh database: req/s, latencies, and every acknowledged
       delivery stored (SELECT COUNT(*) FROM deploys).
  pg1c1  the same with one connection (wrk -t1 -c1).
  pg2  two servers on one fresh database, the load split between them: two
       wrk processes in parallel, each -t1 -c16 against its own replica with
       a disjoint half of the pool. The combined req/s, each replica's p99,
       acked by both <= rows stored, and both replicas' /metrics agreeing on
       the sum of hookgauge_deployments_total (and on the rows) within ~2 s
       of the end of the load, the time the change feed gets.

Each also counts the statements the servers sent during the load (each a
round trip; pg_stat_statements) and the CPU each part used: hookgauge,
PostgreSQL (postmaster and backends), wrk, and the whole machine. On a
2-core machine the replicas, PostgreSQL and wrk share the same cores, so
pg2's sum is bounded by the machine, not by how replicas scale: the CPU
per delivery is what tells what N replicas on machines of their own give.
"""

import os
import resource
import time

from ..core import commas, ms, note, say
from ..postgres import Cluster
from . import load


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid, children=False):
    """CPU seconds (user + system) of process `pid` so far; with
    `children`, also of its children it has waited for."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def postgres_cpu(pg):
    """CPU seconds of the cluster: the postmaster (with the backends that
    exited) and every live process it started."""
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    total = process_cpu(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == postmaster:
            total += process_cpu(int(entry))
    return total


def machine_busy():
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Cpu:
    """CPU used by each part during a load: the hookgauge servers, the
    PostgreSQL cluster, wrk (the harness's waited-for children) and the
    whole machine."""

    def __init__(self, pg, servers):
        self.pg, self.servers = pg, servers
        self.start = self.sample()

    def sample(self):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (sum(process_cpu(s.pid) for s in self.servers), postgres_cpu(self.pg),
                children.ru_utime + children.ru_stime, machine_busy())

    def stop(self):
        end = self.sample()
        hookgauge, postgres, wrk = (end[i] - self.start[i] for i in range(3))
        busy = end[3][0] - self.start[3][0]
        total = end[3][1] - self.start[3][1]
        return dict(hookgauge=hookgauge, postgres=postgres, wrk=wrk,
                    busy=busy / total if total else 0.0, seconds=total / TICK / (os.cpu_count() or 1))


def cpu_note(table, cpu, acked):
    """Prints and tabulates the CPU per delivery of each part."""
    if acked <= 0:
        return
    per = {k: cpu[k] / acked * 1e6 for k in ("hookgauge", "postgres", "wrk")}
    note("CPU over the load (%.1f s): hookgauge %.2f s (%.0f us a delivery), PostgreSQL %.2f s (%.0f us), "
         "wrk %.2f s (%.0f us); the machine %.0f %% busy on %d CPU(s)"
         % (cpu["seconds"], cpu["hookgauge"], per["hookgauge"], cpu["postgres"], per["postgres"], cpu["wrk"],
            per["wrk"], cpu["busy"] * 100, os.cpu_count()))
    table.row("  CPU a delivery: hookgauge / PostgreSQL / wrk (machine busy)",
              "%.0f / %.0f / %.0f us (%.0f %%)" % (per["hookgauge"], per["postgres"], per["wrk"], cpu["busy"] * 100))


def cluster(run):
    return run.postgres or Cluster(run)


def pg1(cfg, run, shape, pool, table, threads=None, connections=None, name="pg1"):
    """One server; `pg1c1` is the same with one connection."""
    threads = threads or cfg.threads
    connections = connections or cfg.connections
    pg = cluster(run)
    database = "bench_%s_%s" % (name, shape.name.lower())
    say("%s %s: one server on PostgreSQL %s, wrk -t%d -c%d -d%s"
        % (shape.name, name, pg.version, threads, connections, cfg.duration))
    note("this machine has %d CPU(s), shared by hookgauge, PostgreSQL and wrk" % os.cpu_count())
    url = pg.new_database(database)
    server = run.start_server(shape.name + "-" + name, store_url=url, password_file=pg.password_file)
    try:
        before = pg.statements(database)
        cpu = Cpu(pg, [server])
        lines = (0, min(pool.count, load.lines_for(cfg, "c32" if connections > 1 else "c1")))
        result = run.wrk(server, threads, connections, cfg.duration, pool, lines, name)
        cpu = cpu.stop()
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
        run.fail("%s %s: acked %d > stored %d" % (shape.name, name, acked, rows))
    label = "%s: PostgreSQL %s, one replica, wrk -t%d -c%d req/s" % (name, pg.version, threads, connections)
    latencies = "%s / %s / %s ms" % (ms(result.p(50)), ms(result.p(99)), ms(result.p(99.9)))
    if connections > 1:
        table.check(label, commas(result.rps), result.rps, ">=", 5000, ">= 5,000")
        table.check("  p50 / p99 / p99.9", latencies, result.p(99), "<=", 100000, "p99 <= 100 ms")
        run.pg1_rps = result.rps
    else:
        table.row(label, commas(result.rps))
        table.check("  p50 / p99 / p99.9", latencies, result.p(50), "<=", 1500, "p50 <= 1.5 ms")
    table.correctness("  acked / stored (rows in deploys)", acked, rows)
    round_trips(table, pg, database, acked, before, after)
    cpu_note(table, cpu, acked)


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
        cpu = Cpu(pg, servers)
        half = pool.count // 2
        ranges = [(0, half), (half, pool.count - half)]
        background = [run.wrk(server, threads, connections, cfg.duration, pool, lines, "pg2", background=True)
                      for server, lines in zip(servers, ranges)]
        results = [run.wrk_result(process, path, "pg2") for process, path in background]
        cpu = cpu.stop()
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
    label = "pg2: two replicas, 2x wrk -t%d -c%d req/s (sum)" % (threads, connections)
    together = "%s (%s + %s)" % (commas(rps), commas(results[0].rps), commas(results[1].rps))
    one = getattr(run, "pg1_rps", None)
    if one:
        table.check(label, together, rps, ">=", one, ">= pg1 (%s)" % commas(one))
    else:
        table.row(label, together)
    table.check("  p99 replica 1 / replica 2", "%s / %s ms" % (ms(results[0].p(99)), ms(results[1].p(99))),
                max(results[0].p(99), results[1].p(99)), "<=", 100000, "<= 100 ms")
    table.correctness("  acked by both / stored (rows in deploys)", acked, rows)
    round_trips(table, pg, database, acked, before, after)
    cpu_note(table, cpu, acked)
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
        note("  %10s %10s %8s %8s  %s" % ("calls", "total ms", "mean us", "plan us", "statement (by total time)"))
        for calls, total, mean, plan, query in pg.top_statements(database):
            note("  %10s %10s %8s %8s  %s" % (calls, total, mean, plan, query))
    table.row("  round trips per delivery (statements; deliveries per batch)",
              "%.2f (%.1f)" % (statements / acked, acked / commits))


def run_pg(cfg, run, shape, names, table):
    if shape.kind != "fresh":
        note("%s: pg1 and pg2 run on S1 and S2 only; skipped" % shape.name)
        return
    pool = run.pool(shape.name + "-pg", cfg.pool, shape)
    if "pg1" in names:
        pg1(cfg, run, shape, pool, table)
    if "pg1c1" in names:
        pg1(cfg, run, shape, pool, table, threads=1, connections=1, name="pg1c1")
    if "pg2" in names:
        pg2(cfg, run, shape, pool, table)
