"""Ingest load: c32, c1 and full against hookgauge, ceil32 and ceil1 against
the bare actix-web server (bench/ceiling), in the order given, so that a
comparison run interleaves them ("ceil32 c32 ceil1 c1", BENCH_ROUNDS times).

  c32    signed unique deploytime webhooks, wrk -t2 -c32, synchronous=normal
  c1     the same with one connection (wrk -t1 -c1)
  full   as c32 with synchronous=full (fresh-server shapes only)
  ceil32, ceil1  the same requests against the ceiling
  pel32, pel1    the same requests against Pelorus' webhook exporter
                 (BENCH_PELORUS; pelorus.py), a fresh one per run

Every hookgauge run checks that every acknowledged (2xx) delivery was
stored: the growth of hookgauge_deployments_total over the run must be at
least the 2xx answers (acked > stored is a lost delivery).
"""

from ..core import commas, median, ms, note, say
from . import pelorus

NAMES = ("ceil32", "c32", "ceil1", "c1", "full") + pelorus.NAMES


def shape_of(cfg, name):
    """(threads, connections) of a load scenario."""
    if name in ("c1", "ceil1", "pel1"):
        return 1, 1
    return cfg.threads, cfg.connections


def lines_for(cfg, name):
    """How much of a pool a run may use: c1 runs send at most about half of
    what c32 runs send (the ceiling's c1 a quarter of its c32 on 2 cores)."""
    if name in ("c1", "ceil1", "pel1"):
        return max(cfg.pool // 2, 1000)
    return cfg.pool


def measure(cfg, run, server, name, pool, lines, table_figures, label=None):
    """One wrk run against a running hookgauge server; checks acked <= stored
    and records the figures under `name` in `table_figures`."""
    threads, connections = shape_of(cfg, name)
    before = server.scrape().stored()
    result = run.wrk(server, threads, connections, cfg.duration, pool, lines, name)
    settled = server.settle()
    stored = settled.stored() - before
    rss, hwm = server.rss()
    acked = result["s2xx"]
    figures = {"rps": result.rps, "p50": result.p(50), "p99": result.p(99), "p999": result.p(99.9),
               "rss": rss, "hwm": hwm, "acked": acked, "stored": stored, "non2xx": result["non2xx"]}
    table_figures.setdefault(name, []).append(figures)
    print_figures(figures, result)
    if acked > stored:
        run.fail("%s %s: acked %d > stored %d: %d acknowledged deliveries were lost"
                 % (label or "", name, acked, stored, acked - stored))
    else:
        note("ok: acked %s <= stored %s" % (commas(acked), commas(stored)))
    return figures


def measure_ceiling(cfg, run, name, pool, lines, table_figures):
    threads, connections = shape_of(cfg, name)
    server = run.start_ceiling(name)
    try:
        result = run.wrk(server, threads, connections, cfg.duration, pool, lines, name)
    finally:
        server.stop()
    figures = {"rps": result.rps, "p50": result.p(50), "p99": result.p(99), "p999": result.p(99.9)}
    table_figures.setdefault(name, []).append(figures)
    note("req/s %s, p50 / p99 / p99.9 %s / %s / %s ms, answered 202: %s"
         % (commas(result.rps), ms(result.p(50)), ms(result.p(99)), ms(result.p(99.9)),
            commas(result["s202"])))
    for warning in result.warnings():
        note(warning)
    return figures


def print_figures(figures, result):
    note("req/s %s, p50 / p99 / p99.9 %s / %s / %s ms, VmRSS %.1f MiB (peak %.1f)"
         % (commas(figures["rps"]), ms(figures["p50"]), ms(figures["p99"]), ms(figures["p999"]),
            figures["rss"] / 1024, figures["hwm"] / 1024))
    note("statuses %s, non-2xx %d, socket errors %s"
         % (result.values.get("statuses") or "none", result["non2xx"], result.errors()))
    for warning in result.warnings():
        note(warning)


def fresh_servers(cfg, run, shape, names, figures):
    """The load scenarios of a fresh-server shape (S1, S2): each hookgauge run
    on a fresh server and data dir, every run over the same pool."""
    pool = run.pool(shape.name, cfg.pool, shape)
    for round_number in range(cfg.rounds):
        for name in names:
            threads, connections = shape_of(cfg, name)
            label = "%s %s" % (shape.name, name)
            suffix = " (round %d)" % (round_number + 1) if cfg.rounds > 1 else ""
            if name.startswith("ceil"):
                say("%s: the same requests against the ceiling, wrk -t%d -c%d -d%s%s"
                    % (label, threads, connections, cfg.duration, suffix))
                measure_ceiling(cfg, run, name, pool, (0, lines_for(cfg, name)), figures)
                continue
            if name.startswith("pel"):
                say("%s: the same requests against Pelorus' exporter, wrk -t%d -c%d -d%s%s"
                    % (label, threads, connections, cfg.duration, suffix))
                pelorus.measure(cfg, run, name, pool, (0, lines_for(cfg, name)), figures, threads, connections)
                continue
            sync = "full" if name == "full" else "normal"
            say("%s: wrk -t%d -c%d -d%s, synchronous=%s%s"
                % (label, threads, connections, cfg.duration, sync, suffix))
            server = run.start_server("%s-%s" % (shape.name, name), sync)
            try:
                measure(cfg, run, server, name, pool, (0, lines_for(cfg, name)), figures, shape.name)
            finally:
                server.stop()


def shared_server(cfg, run, shape, server, names, pool, figures):
    """The load scenarios of a filled or pre-filled store (S3, S4, S5): every
    hookgauge run against `server`, each with its own range of the pool; the
    ceiling runs in between, over the range the next hookgauge run takes."""
    for round_number in range(cfg.rounds):
        for name in names:
            if name == "full":
                note("%s: full runs on fresh servers only (S1, S2); skipped" % shape.name)
                continue
            threads, connections = shape_of(cfg, name)
            suffix = " (round %d)" % (round_number + 1) if cfg.rounds > 1 else ""
            count = lines_for(cfg, name)
            if name.startswith("ceil"):
                say("%s %s: the same requests against the ceiling, wrk -t%d -c%d -d%s%s"
                    % (shape.name, name, threads, connections, cfg.duration, suffix))
                count = min(count, pool.count - pool.cursor)
                measure_ceiling(cfg, run, name, pool, (pool.cursor, count), figures)
                continue
            if name.startswith("pel"):
                say("%s %s: the same requests against Pelorus' exporter, wrk -t%d -c%d -d%s%s"
                    % (shape.name, name, threads, connections, cfg.duration, suffix))
                count = min(count, pool.count - pool.cursor)
                pelorus.measure(cfg, run, name, pool, (pool.cursor, count), figures, threads, connections)
                continue
            say("%s %s: wrk -t%d -c%d -d%s on the same server%s"
                % (shape.name, name, threads, connections, cfg.duration, suffix))
            measure(cfg, run, server, name, pool, pool.take(count), figures, shape.name)


def summarize(cfg, table, figures, prefix=""):
    """Rows of the shape's table: medians over the rounds."""
    def med(name, key):
        return median([f[key] for f in figures.get(name, [])])

    rounds = " (median of %d)" % cfg.rounds if cfg.rounds > 1 else ""
    latencies = "%s / %s / %s ms"
    for name, ceiling, other in (("c32", "ceil32", "pel32"), ("c1", "ceil1", "pel1"), ("full", None, None)):
        if not any(n in figures for n in (name, ceiling, other) if n):
            continue
        has = name in figures
        has_ceiling = ceiling is not None and ceiling in figures
        has_other = other is not None and other in figures
        rps = commas(med(name, "rps")) if has else "-"
        ceiling_rps = commas(med(ceiling, "rps")) if has_ceiling else ""
        other_rps = commas(med(other, "rps")) if has_other else ""
        threads, connections = shape_of(cfg, name)
        what = "%s%s req/s (wrk -t%d -c%d)%s" % (prefix, name, threads, connections, rounds)
        if has and name == "c32":
            table.check(what, rps, med(name, "rps"), ">=", cfg.target_rps,
                        ">= %s" % commas(cfg.target_rps), ceiling_rps, other_rps)
        else:
            table.row(what, rps, ceiling_rps, pelorus=other_rps)

        def spread(n, present):
            return latencies % (ms(med(n, "p50")), ms(med(n, "p99")), ms(med(n, "p999"))) if present else ""

        table.row("  p50 / p99 / p99.9", spread(name, has) or "-", spread(ceiling, has_ceiling),
                  pelorus=spread(other, has_other))
        if has:
            table.row("  VmRSS / peak (VmHWM) after the run",
                      "%.1f / %.1f MiB" % (max(f["rss"] for f in figures[name]) / 1024,
                                           max(f["hwm"] for f in figures[name]) / 1024),
                      pelorus="%.1f / %.1f MiB" % (max(f["rss"] for f in figures[other]) / 1024,
                                                   max(f["hwm"] for f in figures[other]) / 1024)
                      if has_other else "")
            table.correctness("  acked / stored", sum(f["acked"] for f in figures[name]),
                              sum(f["stored"] for f in figures[name]))
    if "c32" in figures and "ceil32" in figures:
        ratio = 100.0 * med("c32", "rps") / max(med("ceil32", "rps"), 1e-9)
        table.check(prefix + "hookgauge / ceiling at c32 (durable acks)", "%.1f %%" % ratio, ratio,
                    ">=", 50, ">= 50 %")
    if "c1" in figures and "ceil1" in figures:
        extra = (med("c1", "p99") - med("ceil1", "p99")) / 1000.0
        table.check(prefix + "c1 p99 above the ceiling's", "%.2f ms" % extra, extra, "<=", 0.1, "<= 0.1 ms")
    if "c1" in figures and "pel1" in figures:
        table.check(prefix + "c1 p99 against Pelorus' c1 p99 (same run)",
                    "%s ms" % ms(med("c1", "p99")), med("c1", "p99"), "<=", med("pel1", "p99"),
                    "<= %s ms" % ms(med("pel1", "p99")), pelorus="%s ms" % ms(med("pel1", "p99")))
    if "c1" in figures:
        table.check(prefix + "c1 p99.9", "%s ms" % ms(med("c1", "p999")), med("c1", "p999") / 1000.0,
                    "<=", 5, "<= 5 ms")
