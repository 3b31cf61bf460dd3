"""The harness's shared core: settings from the environment, the run's
temporary directory and cleanup, servers (hookgauge and the ceiling) on free
loopback ports with fresh data directories, wrk runs and their results,
scrapes of /metrics, RSS from /proc, and the tables the figures are printed in.

Nothing here decides what a scenario measures; bench/hookbench/scenarios/ does.
"""

import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from . import pool as pools


class BenchError(Exception):
    """Something broke (not a missed target): the run exits 1."""


STARTED = time.monotonic()


def say(text):
    """A step, with the seconds since the run started."""
    print("==> [%4.0fs] %s" % (time.monotonic() - STARTED, text), flush=True)


def note(text):
    print("    " + text, flush=True)


def commas(value, digits=0):
    return "{:,.{}f}".format(value, digits)


def ms(us):
    """Microseconds to a millisecond figure for the tables."""
    value = us / 1000.0
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def duration_seconds(text):
    """Seconds in a wrk-style duration: a number, or with suffix s, m or h."""
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", text)
    if not match:
        raise BenchError("cannot parse the duration %r (e.g. 10s, 2m, 1h)" % text)
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def env_int(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BenchError("%s: %r is not a number" % (name, value)) from None


def free_ports(count):
    """Distinct free loopback ports (all held open while they are read)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(url, timeout=30):
    """(status, body bytes, seconds) of a GET on a fresh connection. The
    seconds run from the connect to the last byte received, read 1 MiB at a
    time as a scraper does: http.client reads a chunked body through an
    8 KiB buffer, which at a 60 MB exposition took longer than the server
    (about 70 ms of a 200 ms scrape). The body is decoded after the clock
    stops."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
               % (parts.path or "/", host, parts.port)).encode()
    start = time.perf_counter()
    received = bytearray()
    with socket.create_connection((host, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while True:
            n = sock.recv_into(view)
            if n == 0:
                break
            received += view[:n]
    seconds = time.perf_counter() - start
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = dechunk(rest) if headers.get("transfer-encoding", "").lower() == "chunked" else rest
    return status, body, seconds


def dechunk(data):
    """The body of a chunked transfer encoding."""
    parts = []
    at = 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(data[end + 2:end + 2 + size])
        at = end + 2 + size + 2


def rss_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status."""
    values = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def mib(kib):
    return "%.1f" % (kib / 1024.0)


# ----------------------------------------------------------- /metrics ---


class Scrape:
    """One /metrics answer and what the benchmark reads from it."""

    def __init__(self, body, seconds):
        self.body, self.seconds, self.size = body, seconds, len(body)
        self.text = body.decode("utf-8", "replace")

    def total(self, name):
        """Sum of every sample of the metric `name`."""
        total = 0.0
        prefix_brace, prefix_space = name + "{", name + " "
        for line in self.text.splitlines():
            if line.startswith(prefix_brace) or line.startswith(prefix_space):
                total += float(line.rsplit("}", 1)[-1].split()[0])
        return int(total)

    def value(self, name, *labels):
        """The first sample of `name` carrying every given label text, or 0."""
        for line in self.text.splitlines():
            if line.startswith(name + "{") and all(label in line for label in labels):
                return int(float(line.rsplit("}", 1)[-1].split()[0]))
        return 0

    def series(self, name):
        """Number of series of `name`."""
        prefix = name + "{"
        return sum(1 for line in self.text.splitlines() if line.startswith(prefix))

    def stored(self):
        return self.total("hookgauge_deployments_total")

    def accepted(self):
        return self.value("hookgauge_deliveries_total", 'event="deploytime"', 'outcome="accepted"',
                          'source="pelorus"')


# ------------------------------------------------------------- servers ---


class Server:
    """A hookgauge (or ceiling) process on free loopback ports."""

    def __init__(self, run, name, process, ingest, metrics, data_dir, log):
        self.run, self.name, self.process = run, name, process
        self.ingest, self.metrics, self.data_dir, self.log = ingest, metrics, data_dir, log

    @property
    def pid(self):
        return self.process.pid

    def rss(self):
        return rss_kib(self.pid)

    def scrape(self, timeout=30):
        try:
            status, body, seconds = http_get(self.metrics, timeout)
        except OSError as err:
            raise BenchError("scraping %s failed: %s" % (self.metrics, err)) from None
        if status != 200:
            raise BenchError("scraping %s: status %d" % (self.metrics, status))
        return Scrape(body, seconds)

    def settle(self, count=None):
        """Scrapes until the stored deployments stop moving (requests in
        flight when wrk stopped may still be committing), at most ~5 s;
        returns the last scrape. `count` may replace the scrape's count."""
        count = count or (lambda scrape: scrape.stored())
        last = self.scrape()
        previous = count(last)
        for _ in range(25):
            time.sleep(0.2)
            last = self.scrape()
            current = count(last)
            if current == previous:
                break
            previous = current
        return last

    def tail(self, lines=20):
        try:
            with open(self.log, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        self.run.stop_process(self.process, "server " + self.name)



def file_system(path):
    """The type of the file system `path` is on, as mounted (ext4): findmnt
    knows it; stat -f only knows its magic number, which ext2, ext3 and ext4
    share."""
    mounted = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path],
                             capture_output=True, text=True).stdout.strip()
    return mounted or subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                                     text=True).stdout.strip() or "?"

class Run:
    """One benchmark run: settings, temporary directory, child processes,
    failures. Used as a context manager: everything it started is stopped
    and the directory removed on exit, failures included."""

    def __init__(self, root):
        self.root = root
        self.bench_dir = os.path.join(root, "bench")
        self.smoke = os.environ.get("BENCH_SMOKE") == "1"
        self.verbose = os.environ.get("BENCH_VERBOSE") == "1"
        self.keep = os.environ.get("BENCH_KEEP") == "1"
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
        if not os.path.isabs(target):
            target = os.path.join(root, target)
        self.bin = os.environ.get("BENCH_BIN") or os.path.join(target, "release", "hookgauge")
        self.ceiling_bin = os.environ.get("BENCH_CEILING_BIN") or os.path.join(
            target, "release", "hookgauge-ceiling")
        self.lua = os.path.join(self.bench_dir, "webhook.lua")
        self.flood_lua = os.path.join(self.bench_dir, "flood.lua")
        self.ready_timeout = env_int("BENCH_READY_TIMEOUT", 10)
        self.secret = "bench-" + os.urandom(16).hex()
        self.failures = []
        self.processes = []
        self.wrk_runs = 0
        self.tmp = None
        self.postgres = None

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="hookgauge-bench.", dir=os.environ.get("TMPDIR") or "/tmp")
        return self

    def __exit__(self, *exc):
        for process in list(self.processes):
            self.stop_process(process, "process")
        if self.postgres is not None:
            self.postgres.remove()
        if self.keep:
            print("bench: kept " + self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    # -- bookkeeping

    def fail(self, text):
        print("FAIL: " + text, file=sys.stderr, flush=True)
        self.failures.append(text)

    def path(self, *parts):
        path = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def dir(self, *parts):
        path = os.path.join(self.tmp, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def spawn(self, args, stdout=None, stderr=None, env=None, nice=False):
        process = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env,
                                   preexec_fn=(lambda: os.nice(10)) if nice else None)
        self.processes.append(process)
        return process

    def stop_process(self, process, what, timeout=10):
        """SIGTERM (a graceful shutdown for the servers), SIGKILL after `timeout`."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                print("bench: %s %d did not stop on SIGTERM within %d s; killing it"
                      % (what, process.pid, timeout), file=sys.stderr)
                process.kill()
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    # -- the machine line

    def machine(self):
        data_fs = file_system(self.tmp)
        with open("/proc/loadavg") as loadavg:
            load = " ".join(loadavg.read().split()[:3])
        return "%d cores, Linux %s, data dir on %s (%s), load average %s" % (
            os.cpu_count() or 0, platform.release(), data_fs, os.path.dirname(self.tmp), load)

    # -- servers

    def server_env(self, sync, store_url=None, password_file=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKGAUGE")}
        env["HOOKGAUGE__SOURCES__PELORUS__SECRETS"] = self.secret
        env["HOOKGAUGE__STORE__SYNCHRONOUS"] = sync
        if store_url:
            env["HOOKGAUGE__STORE__URL"] = store_url
            env["HOOKGAUGE__STORE__PASSWORD_FILE"] = password_file
        return env

    def start_server(self, name, sync="normal", store_url=None, password_file=None,
                     data_dir=None, ready_timeout=None, quiet=False):
        """A hookgauge process on a fresh data dir (or `data_dir`), ready."""
        directory = self.dir(name)
        data_dir = data_dir or os.path.join(directory, "data")
        log_path = os.path.join(directory, "server.log")
        env = self.server_env(sync, store_url, password_file)
        for attempt in range(3):
            port, mport = free_ports(2)
            log = open(log_path, "ab")
            process = self.spawn([self.bin, "serve", "--data-dir", data_dir,
                                  "--ingest-addr", "127.0.0.1:%d" % port,
                                  "--metrics-addr", "127.0.0.1:%d" % mport],
                                 stdout=subprocess.DEVNULL, stderr=log, env=env)
            log.close()
            server = Server(self, name, process, "http://127.0.0.1:%d" % port,
                            "http://127.0.0.1:%d/metrics" % mport, data_dir, log_path)
            if self.wait_ready(server, ready_timeout or self.ready_timeout):
                if not quiet:
                    where = "store " + store_url.split("?")[0] if store_url else "synchronous=" + sync
                    note("server pid %d, ingest %s, metrics %s, %s"
                         % (process.pid, server.ingest, server.metrics, where))
                return server
            if "in use" not in server.tail():
                break
            note("server %s found a port taken; retrying" % name)
        raise BenchError("server (%s) did not become ready:\n%s" % (name, server.tail()))

    def wait_ready(self, server, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if server.process.poll() is not None:
                self.stop_process(server.process, "server")
                return False
            try:
                status, _, _ = http_get(server.ingest + "/readyz", timeout=2)
                if status == 200:
                    return True
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop_process(server.process, "server")
                raise BenchError("server (%s) not ready after %d s:\n%s"
                                 % (server.name, timeout, server.tail()))
            time.sleep(0.05)

    def have_ceiling(self):
        return os.access(self.ceiling_bin, os.X_OK)

    def start_ceiling(self, name):
        """The bare actix-web server (bench/ceiling) on a free port, ready."""
        directory = self.dir(name)
        log_path = os.path.join(directory, "server.log")
        for attempt in range(5):
            (port,) = free_ports(1)
            log = open(log_path, "ab")
            process = self.spawn([self.ceiling_bin, "127.0.0.1:%d" % port],
                                 stdout=subprocess.DEVNULL, stderr=log)
            log.close()
            server = Server(self, name, process, "http://127.0.0.1:%d" % port, None, None, log_path)
            if self.wait_ready(server, self.ready_timeout):
                return server
        raise BenchError("ceiling server (%s) did not start:\n%s" % (name, server.tail()))

    # -- pools

    def pool(self, name, count, shape, apps=None):
        path = self.path("pools", name + ".txt")
        start = time.monotonic()
        line_len = pools.generate(path, count, self.secret, shape, apps)
        note("generated %s signed unique %s deliveries (%s) in %.1f s, %d bytes a line"
             % (commas(count), shape.name, name, time.monotonic() - start, line_len))
        return pools.Pool(path, count, line_len)

    def drop_pools(self):
        """Removes the pool files (a full run writes about 1 GB of them)."""
        if not self.keep:
            shutil.rmtree(os.path.join(self.tmp, "pools"), ignore_errors=True)

    # -- wrk

    def wrk(self, server, threads, connections, duration, pool, lines, name,
            marker_dir=None, background=False):
        """wrk over the pool lines `lines` = (first, count) against the
        server's /pelorus/webhook. Returns the parsed result, or with
        `background` the (process, output path) to finish with wrk_result."""
        first, count = lines
        self.wrk_runs += 1
        out_path = self.path(name, "wrk-%d.txt" % self.wrk_runs)
        env = dict(os.environ, BENCH_POOL_FILE=pool.path, BENCH_POOL_FIRST=str(first),
                   BENCH_POOL_COUNT=str(count), BENCH_LINE_LEN=str(pool.line_len),
                   BENCH_THREADS=str(threads), BENCH_MARKER_DIR=marker_dir or "")
        out = open(out_path, "wb")
        process = self.spawn(["wrk", "-t%d" % threads, "-c%d" % connections, "-d%s" % duration,
                              "--latency", "-s", self.lua, server.ingest + "/pelorus/webhook"],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        if background:
            return process, out_path
        process.wait()
        return self.wrk_result(process, out_path, name)

    def wrk_whole_pool(self, server, threads, connections, timeout, pool, name):
        """wrk over every line of `pool`, until every thread has had the
        answer to its last line (bench/webhook.lua's markers) or `timeout`
        seconds; returns (result, seconds, finished)."""
        markers = self.dir(name, "markers")
        started = time.monotonic()
        process, out_path = self.wrk(server, threads, connections, "%ds" % timeout, pool, pool.whole(),
                                     name, marker_dir=markers, background=True)
        finished = False
        while process.poll() is None:
            if len([m for m in os.listdir(markers) if m.startswith("done.")]) >= threads:
                finished = True
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # wrk prints its results and done() runs
        return self.wrk_result(process, out_path, name + " fill"), seconds, finished

    def wrk_result(self, process, out_path, name):
        rc = process.wait()
        if process in self.processes:
            self.processes.remove(process)
        with open(out_path, errors="replace") as out:
            text = out.read()
        if self.verbose:
            print("".join("    | " + line + "\n" for line in text.splitlines()), end="")
        if rc != 0:
            raise BenchError("wrk failed (%s, exit %d):\n%s" % (name, rc, text))
        result = WrkResult(text)
        if not result.values:
            raise BenchError("the wrk script printed no results (%s):\n%s" % (name, text))
        return result


class WrkResult:
    """The "bench-result key=value" lines of bench/webhook.lua's done()."""

    def __init__(self, text):
        self.values = {}
        for line in text.splitlines():
            if line.startswith("bench-result "):
                key, _, value = line[len("bench-result "):].partition("=")
                self.values.setdefault(key, value)

    def __getitem__(self, key):
        value = self.values.get(key, "0")
        try:
            return int(value)
        except ValueError:
            return float(value)

    @property
    def rps(self):
        seconds = self["duration_us"] / 1e6
        return self["requests"] / seconds if seconds > 0 else 0.0

    def p(self, percentile):
        return self["latency_p%s_us" % str(percentile).replace(".", "_")]

    def errors(self):
        return "connect %d, read %d, write %d, timeout %d" % (
            self["errors_connect"], self["errors_read"], self["errors_write"], self["errors_timeout"])

    def warnings(self):
        lines = []
        if self["s200"] > 0:
            lines.append("WARNING: %d answers were 200 (duplicate); the pool should be unique" % self["s200"])
        if self["exhausted_threads"] > 0:
            lines.append("WARNING: %d wrk thread(s) used up their slice of the pool: req/s and latency "
                         "include filler requests; raise BENCH_POOL" % self["exhausted_threads"])
        return lines


def median(values):
    return statistics.median(values) if values else 0.0


# -------------------------------------------------------------- tables ---


class Table:
    """A table of figures: measurement, hookgauge, ceiling, Pelorus, target,
    verdict. The Pelorus column is shown when a row has a figure in it."""

    HEADER = ("measurement", "hookgauge", "ceiling", "Pelorus", "target", "verdict")
    # False in the smoke run: its figures are not measurements, so no
    # target is met or missed (correctness verdicts stay).
    targets = True

    def __init__(self, title):
        self.title, self.rows = title, []

    def row(self, measurement, result, ceiling="", target="", verdict="", pelorus=""):
        self.rows.append((measurement, result, ceiling, pelorus, target, verdict))

    def check(self, measurement, result, value, op, goal, target, ceiling="", pelorus=""):
        if not self.targets:
            self.row(measurement, result, ceiling, pelorus=pelorus)
            return
        met = value >= goal if op == ">=" else value <= goal
        self.row(measurement, result, ceiling, target, "met" if met else "MISSED", pelorus)

    def correctness(self, measurement, acked, stored):
        self.row(measurement, "%s / %s" % (commas(acked), commas(stored)), "", "acked <= stored",
                 "ok" if acked <= stored else "FAILED")

    def render(self, machine):
        columns = [i for i in range(len(self.HEADER)) if i != 3 or any(row[3] for row in self.rows)]
        rows = [tuple(row[i] for i in columns) for row in [self.HEADER] + self.rows]
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(columns))]
        lines = [self.title, "machine: " + machine]
        rows.insert(1, tuple("-" * len(h) for h in rows[0]))
        for row in rows:
            lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        return "\n".join(lines)


class Scraper(threading.Thread):
    """Scrapes /metrics every `interval` seconds until stopped; keeps the times."""

    def __init__(self, server, interval=1.0):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.times, self.sizes, self.errors = [], [], 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                status, body, seconds = http_get(self.server.metrics, timeout=30)
                if status == 200:
                    self.times.append(seconds)
                    self.sizes.append(len(body))
                else:
                    self.errors += 1
            except OSError:
                self.errors += 1
            self.halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self):
        self.halt.set()
        self.join()
