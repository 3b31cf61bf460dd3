"""The same requests against Pelorus' webhook exporter, in the same run.

Pelorus is not part of this repository. BENCH_PELORUS names a command that
runs its webhook exporter (exporters/webhook/app.py of a Pelorus checkout,
with its Python requirements) on 127.0.0.1:$PORT, checking signatures with
$SECRET_TOKEN; the harness sets both variables and runs the command without
a shell, so that the process it starts is the one it measures (RSS) and
stops. The exporter takes the same signed `deploytime` deliveries as
hookgauge's /pelorus/webhook and answers every GET with its metrics.

  pel32, pel1  the load of c32 and c1 against a fresh exporter per run
               (S1, S2, S5: a column next to hookgauge's and the ceiling's)
  series       on S3 and S4, when BENCH_PELORUS is set: the exporter filled
               with the same deliveries, then its idle scrapes, size,
               RSS, c32 quiet and c32 scraped every second, each next to
               hookgauge's figure in the shape's table

The exporter keeps its series in memory only: it stores nothing, so its
figures are what hookgauge replaces, not a durable path. It keys a deploy
by application and timestamp: S4's ten namespaces of an application,
deployed in the same second, are one series there (10k, not 100k); the
table says how many it kept and the bytes per series are its own.
"""

import os
import shlex
import time

from ..core import BenchError, Scraper, Server, commas, free_ports, median, note, say

NAMES = ("pel32", "pel1")


def command():
    return os.environ.get("BENCH_PELORUS", "").strip()


def start(run, name):
    """A fresh exporter on a free port, answering its metrics."""
    if not command():
        raise BenchError("%s: set BENCH_PELORUS to the command that runs Pelorus' webhook exporter"
                         " on 127.0.0.1:$PORT (scripts/bench --help)" % name)
    directory = run.dir(name)
    log_path = os.path.join(directory, "server.log")
    for attempt in range(3):
        (port,) = free_ports(1)
        env = dict(os.environ, PORT=str(port), SECRET_TOKEN=run.secret)
        log = open(log_path, "ab")
        process = run.spawn(shlex.split(command()), stdout=log, stderr=log, env=env)
        log.close()
        base = "http://127.0.0.1:%d" % port
        server = Server(run, name, process, base, base + "/metrics", None, log_path)
        # Every GET of the exporter answers its metrics: /readyz included.
        if run.wait_ready(server, max(run.ready_timeout, 30)):
            return server
        if "in use" not in server.tail():
            break
    raise BenchError("Pelorus' exporter (%s) did not start:\n%s" % (name, server.tail()))


def deploy_series(server):
    return server.scrape().series("deploy_timestamp")


def measure(cfg, run, name, pool, lines, figures, threads, connections, server=None):
    """One wrk run against the exporter (a fresh one unless `server`)."""
    own = server is None
    server = server or start(run, name)
    try:
        result = run.wrk(server, threads, connections, cfg.duration, pool, lines, name)
        rss, hwm = server.rss()
    finally:
        if own:
            server.stop()
    got = {"rps": result.rps, "p50": result.p(50), "p99": result.p(99), "p999": result.p(99.9),
           "rss": rss, "hwm": hwm, "non2xx": result["non2xx"]}
    figures.setdefault(name, []).append(got)
    note("Pelorus: req/s %s, p50 / p99 / p99.9 %.2f / %.2f / %.2f ms, non-2xx %d, VmRSS %.1f MiB"
         % (commas(result.rps), got["p50"] / 1000, got["p99"] / 1000, got["p999"] / 1000,
            result["non2xx"], rss / 1024))
    for warning in result.warnings():
        note(warning)
    return got


def fill(cfg, run, shape, server, count, name):
    """Sends exactly `count` deliveries (one per series) and waits until the
    exporter shows them: it records each one in a task after answering."""
    pool = run.pool(name + "-fill", count, shape, apps=shape.apps)
    say("%s: fill Pelorus' exporter with %s series" % (shape.name, commas(count)))
    started = time.monotonic()
    result, _, _ = run.wrk_whole_pool(server, cfg.threads, cfg.connections, cfg.fill_timeout, pool, name)
    series = deploy_series(server)
    deadline = time.monotonic() + 30
    while series < count and time.monotonic() < deadline:
        time.sleep(0.5)
        series = deploy_series(server)
    seconds = time.monotonic() - started
    note("Pelorus fill: %s acked, non-2xx %d, in %.1f s; %s deploy_timestamp series"
         % (commas(result["s2xx"]), result["non2xx"], seconds, commas(series)))
    if series != count:
        # Not a fault of the run: the exporter keeps one deploy per
        # application and timestamp (its own key), so S4's namespaces of
        # one application, deployed in the same second, are one series.
        note("Pelorus keeps %s deploy_timestamp series of the %s deliveries (one per application and"
             " timestamp)" % (commas(series), commas(count)))
    return seconds, series


def series_session(cfg, run, shape, count):
    """S3 / S4 on the exporter: the figures series.session puts next to
    hookgauge's (keys as there)."""
    name = shape.name + "-pelorus"
    server = start(run, name)
    try:
        rss_before, _ = server.rss()
        seconds, series = fill(cfg, run, shape, server, count, name)
        times, size = [], 0
        for _ in range(cfg.scrapes):
            scrape = server.scrape(timeout=120)
            times.append(scrape.seconds)
            size = scrape.size
        times.sort()
        rss, hwm = server.rss()
        note("Pelorus idle scrapes (%d): min / median / max %.1f / %.1f / %.1f ms, %s bytes"
             % (len(times), times[0] * 1000, median(times) * 1000, times[-1] * 1000, commas(size)))
        pool = run.pool(name + "-load", 2 * cfg.pool, shape)
        figures = {}
        say("%s Pelorus c32: wrk -t%d -c%d -d%s" % (shape.name, cfg.threads, cfg.connections, cfg.duration))
        quiet = measure(cfg, run, "pel32", pool, pool.take(cfg.pool), figures,
                        cfg.threads, cfg.connections, server)
        say("%s Pelorus c32 while scraped every second" % shape.name)
        scraper = Scraper(server, 1.0)
        scraper.start()
        try:
            scraped = measure(cfg, run, "pel32-scraped", pool, pool.take(cfg.pool), figures,
                              cfg.threads, cfg.connections, server)
        finally:
            scraper.stop()
        busy = sorted(scraper.times)
    finally:
        server.stop()
    return {"fill_seconds": seconds, "series": series, "times": times, "size": size, "rss": rss, "hwm": hwm,
            "rss_before": rss_before, "quiet": quiet, "scraped": scraped, "busy": busy}
