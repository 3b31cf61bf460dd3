"""The throwaway PostgreSQL cluster of pg1 and pg2, made from Debian's
`postgresql` package (the newest /usr/lib/postgresql/*/bin): initdb into a
temporary directory (as the `postgres` OS user via runuser when the harness
runs as root, since initdb refuses root), scram-sha-256 password
authentication for a login role `hookgauge`, listening on 127.0.0.1 only on
a free port with its socket inside that directory, fsync and
synchronous_commit left on (durable acks); a fresh database per scenario.
It is stopped (pg_ctl stop -m fast, then immediate, then SIGKILL) and
removed when the run ends, failures included.

When the server programs are missing and the harness runs as root with
apt-get, Debian's postgresql is installed the way scripts/test does it, with
postgresql-common first told not to create and start a default cluster.
"""

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile

from .core import BenchError, file_system, free_ports, note, say

ROLE = "hookgauge"
SUPERUSER = "postgres"
OS_USER = "postgres"
CREATECLUSTER = "/etc/postgresql-common/createcluster.conf"


def find_bin():
    def version(path):
        return [int(part) for part in re.findall(r"\d+", path)]

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return directory
    return None


def ensure_installed():
    if find_bin():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError("the PostgreSQL server programs (/usr/lib/postgresql/*/bin) are missing; "
                         "install Debian's postgresql package")
    say("PostgreSQL not found; installing postgresql-common, then postgresql (no default cluster)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def install(package):
        if subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package], env=env).returncode:
            subprocess.run(["apt-get", "update"], env=env)
            if subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package],
                              env=env).returncode:
                raise BenchError("could not install " + package)

    if not os.path.exists(CREATECLUSTER):
        install("postgresql-common")
    with open(CREATECLUSTER) as conf:
        text = conf.read()
    if not re.search(r"^\s*create_main_cluster\s*=\s*false\s*$", text, re.M):
        if re.search(r"^\s*create_main_cluster\s*=", text, re.M):
            text = re.sub(r"^\s*create_main_cluster\s*=.*$", "create_main_cluster = false", text, flags=re.M)
        else:
            text += "\ncreate_main_cluster = false\n"
        with open(CREATECLUSTER, "w") as conf:
            conf.write(text)
    install("postgresql")
    if not find_bin():
        raise BenchError("the PostgreSQL server programs are still missing after installing postgresql")


class Cluster:
    def __init__(self, run):
        ensure_installed()
        self.run = run
        self.bin = find_bin()
        self.version = subprocess.run([os.path.join(self.bin, "postgres"), "--version"], capture_output=True,
                                      text=True).stdout.split()[2]
        self.as_os_user = os.geteuid() == 0
        parent = os.path.dirname(run.tmp)
        uid = gid = None
        if self.as_os_user:
            try:
                entry = pwd.getpwnam(OS_USER)
            except KeyError:
                raise BenchError("running as root, where initdb refuses to run, and there is no '%s' OS user"
                                 % OS_USER) from None
            uid, gid = entry.pw_uid, entry.pw_gid
            if subprocess.run(["runuser", "-u", OS_USER, "--", "test", "-x", parent], cwd="/").returncode:
                parent = "/tmp"
        self.root = tempfile.mkdtemp(prefix="hookgauge-bench-pg.", dir=parent)
        self.server_dir = os.path.join(self.root, "server")
        self.data = os.path.join(self.server_dir, "data")
        self.log = os.path.join(self.server_dir, "server.log")
        self.password = os.urandom(16).hex()
        self.super_password = os.urandom(16).hex()
        self.port = None
        os.mkdir(self.server_dir, 0o700)
        if self.as_os_user:
            os.chmod(self.root, 0o711)
            os.chown(self.server_dir, uid, gid)
        run.postgres = self
        self.fs = file_system(self.root)
        pwfile = os.path.join(self.server_dir, "superuser.pw")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(self.super_password + "\n")
        if self.as_os_user:
            os.chown(pwfile, uid, gid)
        say("PostgreSQL %s (%s): initdb in %s (%s)" % (self.version, self.bin, self.data, self.fs))
        out = self.server("initdb", "-D", self.data, "--auth=scram-sha-256", "--username=" + SUPERUSER,
                          "--pwfile=" + pwfile, "--encoding=UTF8", "--locale=C", "--no-sync")
        if out.returncode:
            raise BenchError("initdb failed:\n" + out.stdout + out.stderr)
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\n# The benchmark's throwaway cluster.\nlisten_addresses = '127.0.0.1'\n"
                       "unix_socket_directories = '%s'\npassword_encryption = 'scram-sha-256'\n"
                       "# Round trips counted per statement (pg1, pg2).\n"
                       "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = on\n"
                       "pg_stat_statements.track_planning = on\n"
                       % self.server_dir)
        for _ in range(3):
            (port,) = free_ports(1)
            logged = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            out = self.server("pg_ctl", "start", "-w", "-t", "30", "-D", self.data, "-l", self.log, "-o", "-p %d" % port)
            if out.returncode == 0:
                self.port = port
                break
            with open(self.log, errors="replace") as log:
                log.seek(logged)
                if "Address already in use" in log.read():
                    note("PostgreSQL found port %d taken; retrying" % port)
                    continue
            raise BenchError("PostgreSQL did not start:\n" + out.stdout + out.stderr)
        if self.port is None:
            raise BenchError("PostgreSQL found its port taken 3 times")
        self.psql(SUPERUSER, self.super_password, "postgres", "CREATE ROLE %s LOGIN PASSWORD '%s'" % (ROLE, self.password))
        self.password_file = run.path("pg-password")
        with open(os.open(self.password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(self.password + "\n")
        note("PostgreSQL %s on 127.0.0.1:%d (scram-sha-256, role %s), data on %s, fsync=%s, synchronous_commit=%s"
             % (self.version, self.port, ROLE, self.fs, self.psql(ROLE, self.password, "postgres", "SHOW fsync"),
                self.psql(ROLE, self.password, "postgres", "SHOW synchronous_commit")))

    def server(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.as_os_user:
            command = ["runuser", "-u", OS_USER, "--"] + command
        return subprocess.run(command, cwd=self.server_dir, capture_output=True, text=True, timeout=120)

    def psql(self, user, password, database, sql):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=password, PGPASSFILE=os.path.join(self.root, "no-pgpass"), PGCONNECT_TIMEOUT="10",
                   PGAPPNAME="hookgauge-bench")
        out = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", database, "-c", sql],
                             env=env, capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise BenchError("psql failed (%s): %s" % (sql.split()[0], out.stderr.strip()))
        return out.stdout.strip()

    def new_database(self, name):
        """A fresh database owned by the login role; its URL (no password)."""
        self.psql(SUPERUSER, self.super_password, "postgres", "CREATE DATABASE %s OWNER %s" % (name, ROLE))
        self.psql(SUPERUSER, self.super_password, name, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return "postgres://%s@127.0.0.1:%d/%s?sslmode=disable" % (ROLE, self.port, name)

    def rows(self, database):
        return int(self.psql(ROLE, self.password, database, "SELECT COUNT(*) FROM deploys"))

    def statements(self, database):
        """What the login role sent to `database` so far: (statements
        executed, transactions committed), from pg_stat_statements. Each
        statement is one round trip: the store sends them one at a time
        (BEGIN and COMMIT included); a batch of the group commit is one
        transaction."""
        out = self.psql(SUPERUSER, self.super_password, database,
                        "SELECT COALESCE(SUM(s.calls), 0), COALESCE(SUM(s.calls) FILTER (WHERE s.query = 'COMMIT'), 0) "
                        "FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '%s' "
                        "AND s.dbid = (SELECT oid FROM pg_database WHERE datname = '%s')" % (ROLE, database))
        calls, commits = out.split("|")
        return int(calls), int(commits)

    def top_statements(self, database, limit=12):
        """The statements the servers spent most time on: (calls, total
        ms, mean us, mean planning us, text)."""
        out = self.psql(SUPERUSER, self.super_password, database,
                        "SELECT s.calls, round(s.total_exec_time), round(s.mean_exec_time * 1000), "
                        "round(s.total_plan_time * 1000 / s.calls), "
                        "regexp_replace(left(s.query, 90), '\\s+', ' ', 'g') FROM pg_stat_statements s "
                        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '%s' AND s.dbid = "
                        "(SELECT oid FROM pg_database WHERE datname = '%s') ORDER BY s.total_exec_time DESC LIMIT %d"
                        % (ROLE, database, limit))
        return [line.split("|", 4) for line in out.splitlines() if line.count("|") >= 4]

    def settle(self, database):
        """Counts the rows until the count stops moving, at most ~5 s."""
        import time
        previous = self.rows(database)
        for _ in range(25):
            time.sleep(0.2)
            current = self.rows(database)
            if current == previous:
                break
            previous = current
        return previous

    def remove(self):
        if not os.path.isdir(self.root):
            return
        pid_file = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pid_file):
            for mode in ("fast", "immediate"):
                try:
                    if self.server("pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", self.data).returncode == 0:
                        break
                except subprocess.TimeoutExpired:
                    pass
            try:
                with open(pid_file) as f:
                    pid = int(f.readline())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if self.data.encode() in f.read():
                        print("bench: PostgreSQL (%d) did not stop; killing it" % pid)
                        os.kill(pid, 9)
            except (OSError, ValueError):
                pass
        if self.run.keep and os.path.exists(self.log):
            shutil.copy(self.log, os.path.join(self.run.tmp, "postgresql.log"))
        shutil.rmtree(self.root, ignore_errors=True)
