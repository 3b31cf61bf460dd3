"""Series at scale: a store filled with exactly N deliveries, each a new
deploy_timestamp series, then the cost of those series.

S3 and S4 always run on such a store (N = BENCH_FILL, 100k series: one per
app in S3, one per app and namespace in S4); the scenario "scrape" does the
same on S1 or S2 (100k digests of one app, resp. of 50 apps).

  fill     wrk -c32 sends exactly N deliveries and waits for every answer
           (bench/webhook.lua's markers); /metrics must then show exactly N
           deploy_timestamp series, and acked <= stored
  idle     BENCH_SCRAPES timed scrapes: min / median / max, bytes, bytes
           per series; VmRSS and VmHWM, RSS bytes per series (growth over
           the fill divided by N)
  load     the shape's load scenarios on the filled server (load.py)
  scraped  c32 once more with a scrape every second: ingest p99 quiet (the
           c32 run before) vs scraped, and the scrapes' times under load

With "pel32" among the scenarios (and BENCH_PELORUS set), Pelorus' webhook
exporter goes through the same steps first (pelorus.py), and its figures
stand in the table's Pelorus column next to hookgauge's.
"""

from ..core import Scraper, commas, median, mib, note, say
from . import load, pelorus


def fill(cfg, run, shape, server, count, name):
    """Sends exactly `count` deliveries of `shape` (one per series) and waits
    for every answer; checks the series and acked <= stored."""
    pool = run.pool(name + "-fill", count, shape, apps=shape.apps)
    say("%s: fill %s series (wrk -t%d -c%d, every delivery answered)"
        % (shape.name, commas(count), cfg.threads, cfg.connections))
    before = server.scrape().stored()
    result, seconds, done = run.wrk_whole_pool(server, cfg.threads, cfg.connections, cfg.fill_timeout,
                                               pool, name)
    if not done:
        run.fail("%s: the fill did not finish within %d s" % (shape.name, cfg.fill_timeout))
    settled = server.settle(lambda scrape: (scrape.stored(), scrape.series("deploy_timestamp")))
    series = settled.series("deploy_timestamp")
    stored = settled.stored() - before
    acked = result["s2xx"]
    note("fill: %s sent, %s acked, non-2xx %d, in %.1f s (~%s req/s); %s deploy_timestamp series"
         % (commas(result["sent"]), commas(acked), result["non2xx"], seconds,
            commas(count / max(seconds, 1e-9)), commas(series)))
    if series != count:
        run.fail("%s: expected %d deploy_timestamp series after the fill, found %d" % (shape.name, count, series))
    if acked > stored:
        run.fail("%s fill: acked %d > stored %d" % (shape.name, acked, stored))
    return {"series": series, "seconds": seconds, "acked": acked, "stored": stored}


def idle_scrapes(cfg, run, server):
    times, size = [], 0
    for _ in range(cfg.scrapes):
        scrape = server.scrape()
        times.append(scrape.seconds)
        size = scrape.size
    return sorted(times), size


def session(cfg, run, shape, names, table, figures, with_pelorus=False):
    """The whole series session of one shape on one server."""
    count = cfg.fill
    if shape.kind == "series":
        shape = shape.series_for(count)
        count = shape.apps * shape.namespaces
    other = pelorus.series_session(cfg, run, shape, count) if with_pelorus else None
    name = shape.name + "-series"
    say("%s: %s series on one server (fill, idle scrapes, %s, c32 scraped every second)"
        % (shape.name, commas(count), " ".join(names) or "no load scenarios"))
    server = run.start_server(name)
    try:
        rss_before, _ = server.rss()
        filled = fill(cfg, run, shape, server, count, name)
        times, size = idle_scrapes(cfg, run, server)
        rss, hwm = server.rss()
        series = filled["series"] or 1
        note("idle scrapes (%d): min / median / max %.1f / %.1f / %.1f ms, %s bytes (%.0f bytes a series)"
             % (len(times), times[0] * 1000, median(times) * 1000, times[-1] * 1000, commas(size),
                size / series))
        note("VmRSS %s MiB, VmHWM %s MiB; %.0f RSS bytes a series (growth over the fill)"
             % (mib(rss), mib(hwm), (rss - rss_before) * 1024.0 / series))

        needed = sum(load.lines_for(cfg, n) for n in names if not n.startswith("ceil")) * cfg.rounds
        pool = run.pool(name + "-load", needed + cfg.pool, shape)
        load.shared_server(cfg, run, shape, server, names, pool, figures)

        say("%s c32 while /metrics is scraped every second, wrk -t%d -c%d -d%s"
            % (shape.name, cfg.threads, cfg.connections, cfg.duration))
        scraper = Scraper(server, 1.0)
        scraper.start()
        try:
            scraped = load.measure(cfg, run, server, "c32-scraped", pool, pool.take(cfg.pool), figures,
                                   shape.name)
        finally:
            scraper.stop()
        busy = sorted(scraper.times)
        if busy:
            note("scrapes under load (%d): median / max %.1f / %.1f ms"
                 % (len(busy), median(busy) * 1000, busy[-1] * 1000))
    finally:
        server.stop()

    prefix = "" if shape.kind == "series" else "at %s series: " % commas(count)
    table.row("%sfill of %s series" % (prefix, commas(count)),
              "%.1f s (~%s req/s)" % (filled["seconds"], commas(count / max(filled["seconds"], 1e-9))),
              pelorus="%.1f s" % other["fill_seconds"] if other else "")
    table.row("  deploy_timestamp series after the fill", commas(filled["series"]), "", "= %s" % commas(count),
              "ok" if filled["series"] == count else "FAILED", pelorus=commas(other["series"]) if other else "")
    table.correctness("  fill acked / stored", filled["acked"], filled["stored"])
    full_scale = count >= 100_000
    scrape_ms = median(times) * 1000
    what = "%s/metrics scrape, idle (median of %d)" % (prefix, len(times))
    figure = "%.1f ms (%.1f-%.1f)" % (scrape_ms, times[0] * 1000, times[-1] * 1000)
    other_figure = ""
    if other:
        t = other["times"]
        other_figure = "%.1f ms (%.1f-%.1f)" % (median(t) * 1000, t[0] * 1000, t[-1] * 1000)
    if full_scale:
        table.check(what, figure, scrape_ms, "<=", cfg.target_scrape_ms, "<= %d ms" % cfg.target_scrape_ms,
                    pelorus=other_figure)
    else:
        table.row(what, figure, "", "(set at 100k)", pelorus=other_figure)
    if busy:
        b = other["busy"] if other else []
        table.row("  under load (c32, one a second; median / max)",
                  "%.1f / %.1f ms" % (median(busy) * 1000, busy[-1] * 1000),
                  pelorus="%.1f / %.1f ms" % (median(b) * 1000, b[-1] * 1000) if b else "")
    table.row("  scrape size, bytes per deploy_timestamp series", "%s bytes, %.0f" % (commas(size), size / series),
              pelorus="%s bytes, %.0f" % (commas(other["size"]), other["size"] / max(other["series"], 1))
              if other else "")
    what = "%sVmHWM (peak RSS) after the fill" % prefix
    if full_scale:
        target = cfg.target_rss_mib_apps if shape.kind == "series" else cfg.target_rss_mib
        table.check(what, "%s MiB" % mib(hwm), hwm / 1024.0, "<=", target, "<= %d MiB" % target,
                    pelorus="%s MiB" % mib(other["hwm"]) if other else "")
    else:
        table.row(what, "%s MiB" % mib(hwm), "", "(set at 100k)",
                  pelorus="%s MiB" % mib(other["hwm"]) if other else "")
    table.row("  VmRSS, RSS bytes per series", "%s MiB, %.0f" % (mib(rss), (rss - rss_before) * 1024.0 / series))
    if shape.kind == "series":
        load.summarize(cfg, table, figures)
    quiet = figures.get("c32", [{}])[-1].get("p99")
    if quiet is not None:
        limit = 2 * quiet
        table.check("%singest p99 at c32, quiet / scraped each second" % prefix,
                    "%.1f / %.1f ms" % (quiet / 1000.0, scraped["p99"] / 1000.0), scraped["p99"], "<=", limit,
                    "<= 2x quiet",
                    pelorus="%.1f / %.1f ms" % (other["quiet"]["p99"] / 1000.0, other["scraped"]["p99"] / 1000.0)
                    if other else "")
    if other:
        table.row("  c32 req/s, quiet / scraped each second",
                  "%s / %s" % (commas(figures["c32"][-1]["rps"]), commas(scraped["rps"])),
                  pelorus="%s / %s" % (commas(other["quiet"]["rps"]), commas(other["scraped"]["rps"])))
    table.correctness("  scraped run acked / stored", scraped["acked"], scraped["stored"])
