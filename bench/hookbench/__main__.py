"""Usage: scripts/bench [--help]
       BENCH_COMPARE=1 scripts/bench                        (every shape, interleaved with the ceiling)
       BENCH_SHAPES="S2 S3" BENCH_SCENARIOS="c32 c1" scripts/bench
       BENCH_SCENARIOS="pg1 pg1c1 pg2" BENCH_SHAPES="S1 S2" scripts/bench
       BENCH_SOAK=1h scripts/bench                          (a line every minute)
       BENCH_SMOKE=1 BENCH_BIN=target/debug/hookgauge BENCH_NO_BUILD=1 scripts/bench

Load benchmark of hookgauge's ingest path and /metrics endpoint. Builds the
release binaries (unless BENCH_NO_BUILD=1), then runs the harness
(python3 bench/hookbench): every server a fresh process on free loopback
ports with a fresh data directory in a temporary directory.

Shapes (BENCH_SHAPES, bench/hookbench/shapes.py): what the deliveries carry.
  S1  one app, random digests, one timestamp (today's); the old benchmark
  S2  50 apps, random sha256 image digests, fresh timestamps (now - 60 s)
  S3  100k series with 100k distinct apps: a store filled with exactly
      BENCH_FILL deliveries, one per app, before the load
  S4  10k apps x 10 namespaces (100k series), filled the same way
  S5  growth: S2 against a store pre-filled with BENCH_PREFILL deliveries

Scenarios (BENCH_SCENARIOS), run on each shape:
  c32      signed unique deploytime webhooks, wrk -t2 -c32, synchronous=normal
  c1       the same with one connection (wrk -t1 -c1)
  full     c32 with synchronous=full (S1, S2)
  ceil32, ceil1  the same load against bench/ceiling (bare actix-web)
  pel32, pel1    the same load against Pelorus' webhook exporter, a fresh
           one per run (BENCH_PELORUS); on S3 and S4, pel32 puts the
           exporter through the same fill, scrapes and loads first
  scrape   on S1, S2: fill BENCH_FILL deliveries (that many series), idle
           and loaded scrape times, bytes and RSS per series, ingest p99
           quiet vs scraped every second. S3 and S4 always measure these.
  pg1      c32's load against one server on a throwaway PostgreSQL cluster:
           req/s, latencies, round trips (statements) per delivery from
           pg_stat_statements, CPU per delivery of hookgauge, PostgreSQL, wrk
  pg1c1    the same with one connection (wrk -t1 -c1)
  pg2      two servers on one PostgreSQL database, the load split (S1, S2)
  flood    a valid sender alone and during a forged-signature flood (once)
  startup  1M events written into a store, time to /readyz (once)
  soak     c32 for BENCH_SOAK, a line (req/s, p99, p99.9, RSS) per interval

Every figure is printed in a table per shape, with its target and the
machine line (cores, kernel, filesystem of the data dir).

Exit status: 0 when the benchmark ran (a missed target is reported, not an
error); 1 when something broke: a tool is missing, the build failed, a
server did not become ready, an acknowledged delivery was not stored, or a
fill did not produce exactly its number of series.

Environment (all optional):
  BENCH_SHAPES         shapes to run, e.g. "S1 S2"           [S1; all with BENCH_COMPARE]
  BENCH_SCENARIOS      scenarios to run                          [c32 c1 full scrape]
  BENCH_COMPARE=1      "ceil32 c32 ceil1 c1" on every shape (S1-S5), interleaved;
                       "ceil32 pel32 c32 ceil1 pel1 c1" when BENCH_PELORUS is set
  BENCH_PELORUS        the command that runs Pelorus' webhook exporter (a checkout
                       of it with its Python requirements; not part of this
                       repository) on 127.0.0.1:$PORT with SECRET_TOKEN as its
                       secret: both are set by the harness; run without a shell
  BENCH_ROUNDS         interleaved rounds; tables show medians                [1]
  BENCH_DURATION       wrk duration of each load run (10s, 1m)               [10s]
  BENCH_CONNECTIONS    connections of c32, full, fills                       [32]
  BENCH_THREADS        wrk threads of c32, full, fills                        [2]
  BENCH_POOL           signed deliveries per c32 run  [max(600000, 60000 a second)]
  BENCH_FILL           series of S3 and S4 and of the scrape scenario    [100000]
  BENCH_FILL_TIMEOUT   seconds allowed for a fill                           [300]
  BENCH_SCRAPES        timed idle /metrics scrapes                           [20]
  BENCH_PREFILL        deliveries in S5's store                         [1000000]
  BENCH_STARTUP_EVENTS events stored for the startup scenario           [1000000]
  BENCH_STARTUP_APPS   applications those events belong to                [10000]
  BENCH_SOAK           soak duration (30m, 2h): runs the soak on S5 (or BENCH_SHAPES)
  BENCH_SOAK_INTERVAL  a soak line every ...                                  [1m]
  BENCH_READY_TIMEOUT  seconds to wait for /readyz                           [10]
  BENCH_SMOKE=1        every shape and scenario for a second or two with tiny
                       fills, correctness only (what scripts/test runs)
  BENCH_BIN            the hookgauge binary     [$CARGO_TARGET_DIR/release/hookgauge]
  BENCH_CEILING_BIN    the ceiling binary [$CARGO_TARGET_DIR/release/hookgauge-ceiling]
  BENCH_NO_BUILD=1     skip `cargo build` (use the existing binaries)
  BENCH_KEEP=1         keep the temporary directory (logs, pools, wrk output)
  BENCH_VERBOSE=1      also print wrk's full output
  TMPDIR               where the temporary directory (and the data dirs) go;
                       its filesystem decides what an fsync costs

Needs wrk and curl (installed with apt-get when missing and running as
root); pg1 and pg2 also Debian's postgresql (installed the same way).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from .core import BenchError, Run, Table, commas, duration_seconds, env_int, say
from .scenarios import flood, growth, load, pelorus, pg, series, startup
from .shapes import SHAPES

KNOWN = ("ceil32", "ceil1", "pel32", "pel1", "c32", "c1", "full", "scrape", "flood", "startup", "pg1", "pg1c1",
         "pg2", "soak")


def settings():
    smoke = os.environ.get("BENCH_SMOKE") == "1"
    compare = os.environ.get("BENCH_COMPARE") == "1"
    soak = os.environ.get("BENCH_SOAK", "")
    if smoke:
        scenarios = ["c32", "c1", "full", "scrape", "flood", "startup", "pg1", "pg1c1", "pg2", "soak"]
        shapes = list(SHAPES)
    elif compare:
        scenarios = ["ceil32", "c32", "ceil1", "c1"]
        if pelorus.command():
            scenarios = ["ceil32", "pel32", "c32", "ceil1", "pel1", "c1"]
        shapes = os.environ.get("BENCH_SHAPES", "S1 S2 S3 S4 S5").split()
    elif soak:
        scenarios = ["soak"]
        shapes = os.environ.get("BENCH_SHAPES", "S5").split()
    else:
        scenarios = os.environ.get("BENCH_SCENARIOS", "c32 c1 full scrape").split()
        shapes = os.environ.get("BENCH_SHAPES", "S1").split()
    for name in scenarios:
        if name not in KNOWN:
            raise BenchError("BENCH_SCENARIOS: unknown scenario %r (known: %s)" % (name, " ".join(KNOWN)))
    for name in shapes:
        if name not in SHAPES:
            raise BenchError("BENCH_SHAPES: unknown shape %r (known: %s)" % (name, " ".join(SHAPES)))
    duration = os.environ.get("BENCH_DURATION", "1s" if smoke else "10s")
    seconds = duration_seconds(duration)
    cfg = SimpleNamespace(
        smoke=smoke, compare=compare, scenarios=scenarios, shapes=shapes, duration=duration,
        rounds=max(1, env_int("BENCH_ROUNDS", 1)),
        threads=env_int("BENCH_THREADS", 2), connections=env_int("BENCH_CONNECTIONS", 32),
        pool=env_int("BENCH_POOL", 20000 if smoke else max(600000, 60000 * seconds)),
        fill=env_int("BENCH_FILL", 200 if smoke else 100000),
        fill_timeout=env_int("BENCH_FILL_TIMEOUT", 300),
        scrapes=env_int("BENCH_SCRAPES", 3 if smoke else 20),
        prefill=env_int("BENCH_PREFILL", 2000 if smoke else 1000000),
        startup_events=env_int("BENCH_STARTUP_EVENTS", 2000 if smoke else 1000000),
        startup_apps=env_int("BENCH_STARTUP_APPS", 20 if smoke else 10000),
        soak_seconds=duration_seconds(soak or ("2s" if smoke else "0")),
        soak_interval=duration_seconds(os.environ.get("BENCH_SOAK_INTERVAL", "1s" if smoke else "1m")),
        soak_rate=10000 if smoke else 20000,
        # RSS after 100k series: 40 MiB for one app's (the scrape scenario), 60 MiB
        # for 100k applications' (S3, S4: each application has its own series).
        target_rps=30000, target_scrape_ms=60, target_rss_mib=40, target_rss_mib_apps=60,
    )
    if cfg.soak_interval <= 0:
        raise BenchError("BENCH_SOAK_INTERVAL must be at least 1s")
    return cfg


def ensure_tool(tool, package):
    if shutil.which(tool):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("%s not found; installing Debian package %s: apt-get install -y %s" % (tool, package, package))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", package], env=env).returncode:
            subprocess.run(["apt-get", "update"], env=env)
            subprocess.run(["apt-get", "install", "-y", package], env=env)
    if not shutil.which(tool):
        raise BenchError("%s not found; install the %s package" % (tool, package))


def run_shape(cfg, run, shape, tables):
    names = cfg.scenarios
    loads = [n for n in names if n in load.NAMES]
    if not run.have_ceiling() and any(n.startswith("ceil") for n in loads):
        if not cfg.smoke:
            raise BenchError("%s not found (build bench/ceiling, or set BENCH_CEILING_BIN)" % run.ceiling_bin)
    if cfg.smoke:
        loads = ["c32", "c1", "full"] if shape.name == "S1" else ["c32"]
        if run.have_ceiling():
            loads = ["ceil32", "c32", "ceil1"] + loads[1:]
    title = "%s: %s" % (shape.name, shape.title)
    if shape.kind == "series" and cfg.fill != 100000:
        title += " (this run: %s series)" % commas(cfg.fill)
    if shape.kind == "growth" and cfg.prefill != 1000000:
        title += " (this run: %s deliveries)" % commas(cfg.prefill)
    table = Table(title)
    figures = {}
    if shape.kind == "fresh":
        if loads:
            load.fresh_servers(cfg, run, shape, loads, figures)
            load.summarize(cfg, table, figures)
        # The smoke run keeps each path once: full and scrape on S1, PostgreSQL on S2.
        if "scrape" in names and (not cfg.smoke or shape.name == "S1"):
            series.session(cfg, run, shape, ["c32"], table, {})
        if any(name in names for name in ("pg1", "pg1c1", "pg2")) and (not cfg.smoke or shape.name == "S2"):
            pg.run_pg(cfg, run, shape, names, table)
    elif shape.kind == "series":
        if loads or "scrape" in names:
            series.session(cfg, run, shape, [n for n in loads if n not in ("full",) + pelorus.NAMES] or ["c32"],
                           table, figures, with_pelorus="pel32" in names)
    elif shape.kind == "growth":
        if loads:
            growth.session(cfg, run, shape, [n for n in loads if n != "full"], table, figures)
    if "soak" in names and (not cfg.smoke or shape.name == "S5"):
        growth.soak(cfg, run, shape, table)
    run.drop_pools()
    if table.rows:
        tables.append(table)


def main():
    if len(sys.argv) > 1:
        if sys.argv[1] in ("-h", "--help"):
            print(__doc__.rstrip())
            return 0
        print("bench: no arguments are taken but --help; choose with BENCH_SCENARIOS and BENCH_SHAPES",
              file=sys.stderr)
        return 1
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    started = time.monotonic()
    try:
        cfg = settings()
        ensure_tool("wrk", "wrk")
        ensure_tool("curl", "curl")
        with Run(root) as run:
            if not os.access(run.bin, os.X_OK):
                raise BenchError("%s not found (build it, or set BENCH_BIN)" % run.bin)
            version = subprocess.run([run.bin, "--version"], capture_output=True, text=True).stdout
            version = (version.splitlines() or ["hookgauge"])[0].strip()
            wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
            wrk_version = (wrk_version.stdout or wrk_version.stderr).splitlines()[0:1]
            say("hookgauge bench: %s" % run.machine())
            print("    %s (%s), %s" % (version or "hookgauge", run.bin, " ".join(wrk_version)))
            if cfg.smoke:
                Table.targets = False
                print("    smoke run: every shape for a second or two with tiny fills; correctness only,"
                      " the figures mean nothing")
            tables = []
            for name in cfg.shapes:
                run_shape(cfg, run, SHAPES[name], tables)
            other = Table("Once per run")
            if "flood" in cfg.scenarios:
                flood.run_flood(cfg, run, SHAPES["S1"], other)
            if "startup" in cfg.scenarios:
                startup.run_startup(cfg, run, other)
            if other.rows:
                tables.append(other)
            machine = run.machine()
            print()
            for table in tables:
                print(table.render(machine))
                print()
            if run.postgres is not None:
                print("PostgreSQL %s, data on %s: hookgauge, PostgreSQL and wrk share this machine's %d CPU(s)"
                      " (the CPU rows say how much each used)." % (run.postgres.version, run.postgres.fs,
                                                                    os.cpu_count()))
            failures = list(run.failures)
    except BenchError as err:
        print("bench: %s" % err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    if failures:
        print("bench: FAILED (%d): %s" % (len(failures), "; ".join(failures)))
        return 1
    print("bench: done in %d s (missed targets are reported above, not treated as errors)" % took)
    return 0


if __name__ == "__main__":
    sys.exit(main())
