//! A throwaway PostgreSQL for the tests, from Debian's `postgresql` package
//! (the newest `/usr/lib/postgresql/<version>/bin`): `initdb` in a temporary
//! directory, the server on a free loopback port with its socket in that
//! directory, password (SCRAM) authentication everywhere, and a login role
//! `hookgauge` that is not a superuser. initdb refuses to run as root, so
//! when the tests run as root the server programs run as Debian's `postgres`
//! OS user. Every program run here is bounded in time.
//!
//! [`Cluster::shared`] is one cluster for the whole test binary, with a
//! fresh database per test from [`Cluster::database`]; [`Cluster::start`]
//! is a private one, for tests that stop the server.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::free_port;

/// The login role the tests (and hookgauge) connect as.
const ROLE: &str = "hookgauge";
/// The bootstrap superuser, used only to create [`ROLE`].
const SUPERUSER: &str = "postgres";
/// The OS user that runs the server when the tests run as root.
const OS_USER: &str = "postgres";
/// How many free ports `start` tries when the one it picked was taken meanwhile.
const PORT_TRIES: usize = 3;
/// pg_ctl's own wait (`-t`), in seconds.
const PG_CTL_WAIT: &str = "30";
/// The limit on any one program run here.
const RUN_LIMIT: Duration = Duration::from_secs(90);

pub struct Cluster {
    /// The temporary directory of everything below; removed on drop.
    root: PathBuf,
    /// Owned by the server's OS user: the data directory, the server log
    /// and the Unix socket.
    server_dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    password: String,
    superuser_password: String,
    /// The server programs run as [`OS_USER`] (the tests run as root).
    as_os_user: bool,
    databases: AtomicU64,
    password_file: OnceLock<PathBuf>,
    torn_down: AtomicBool,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// Stops and removes the shared cluster when the test binary exits.
extern "C" fn stop_shared() {
    if let Some(cluster) = SHARED.get() {
        let _ = std::panic::catch_unwind(|| cluster.teardown());
    }
}

impl Cluster {
    /// A private cluster on a free loopback port (initdb + pg_ctl start),
    /// removed (pg_ctl stop -m immediate + rm -rf) on drop.
    pub fn start() -> Cluster {
        let mut cluster = Cluster::init();
        cluster.start_on_a_free_port(free_port);
        cluster.create_role();
        cluster
    }

    /// A new cluster's files (initdb and the settings), its server not started.
    fn init() -> Cluster {
        let bin = bin_dir();
        // SAFETY: geteuid has no preconditions.
        let as_os_user = unsafe { libc::geteuid() } == 0;
        let owner = as_os_user.then(os_user_ids);
        // The server's user must reach its directory: under /tmp, not a
        // TMPDIR that may be private to root.
        let parent = if as_os_user {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let root = tempfile::Builder::new()
            .prefix("hookgauge-pg-")
            .tempdir_in(&parent)
            .unwrap_or_else(|e| panic!("temporary directory in {}: {e}", parent.display()))
            .keep();
        let server_dir = root.join("server");
        let cluster = Cluster {
            data: server_dir.join("data"),
            log: server_dir.join("server.log"),
            server_dir,
            root,
            port: 0,
            password: random_password(),
            superuser_password: random_password(),
            as_os_user,
            databases: AtomicU64::new(0),
            password_file: OnceLock::new(),
            torn_down: AtomicBool::new(false),
        };
        // From here on a panic drops `cluster`, which stops and removes it.
        fs::create_dir(&cluster.server_dir).unwrap();
        set_mode(&cluster.server_dir, 0o700);
        if let Some((uid, gid)) = owner {
            set_mode(&cluster.root, 0o711);
            std::os::unix::fs::chown(&cluster.server_dir, Some(uid), Some(gid)).unwrap();
        }

        let superuser_pwfile = cluster.server_dir.join("superuser.pw");
        write_private(&superuser_pwfile, &cluster.superuser_password);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&superuser_pwfile, Some(uid), Some(gid)).unwrap();
        }
        let output = run(
            cluster
                .server_command("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .arg("--auth=scram-sha-256")
                .arg(format!("--username={SUPERUSER}"))
                .arg("--pwfile")
                .arg(&superuser_pwfile)
                .args(["--encoding=UTF8", "--locale=C", "--no-sync"]),
            "",
        );
        fs::remove_file(&superuser_pwfile).unwrap();
        if !output.status.success() {
            panic!(
                "initdb ({}) failed ({}):\n{}{}",
                bin.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let settings = format!(
            "\n# The hookgauge tests' cluster.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = 32MB\n\
             max_connections = 200\n",
            cluster.server_dir.display()
        );
        OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .unwrap()
            .write_all(settings.as_bytes())
            .unwrap();

        cluster
    }

    /// Turns TLS on (a throwaway CA, a server certificate for 127.0.0.1,
    /// `ssl = on`), restarting the server on its port; returns the CA's
    /// certificate (PEM), for clients that verify the server.
    pub fn enable_tls(&self) -> PathBuf {
        let dir = self.root.join("tls");
        fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let output = run(Command::new("openssl").args(args).current_dir(&dir), "");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=hookgauge test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        for name in ["server.crt", "server.key"] {
            let target = self.data.join(name);
            fs::copy(dir.join(name), &target).unwrap();
            set_mode(&target, 0o600);
            if self.as_os_user {
                let (uid, gid) = os_user_ids();
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).unwrap();
            }
        }
        OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap()
            .write_all(b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            .unwrap();
        self.pause();
        self.resume();
        dir.join("ca.crt")
    }

    /// Creates [`ROLE`], as the bootstrap superuser.
    fn create_role(&self) {
        let superuser_url = format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port);
        let sql = format!(
            "CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{}'",
            self.password
        );
        let output = self.run_psql(&superuser_url, &sql, Some(&self.superuser_password));
        assert_psql_success(&superuser_url, "CREATE ROLE", &output);
    }

    /// The cluster shared by every test of this binary, started on first
    /// use, stopped and removed when the binary exits.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let cluster = Cluster::start();
            // SAFETY: registers a function that takes nothing and catches
            // its own panics.
            let registered = unsafe { libc::atexit(stop_shared) };
            assert_eq!(registered, 0, "atexit");
            cluster
        })
    }

    /// Creates a new empty database owned by the test role and returns its
    /// URL without the password: `postgres://hookgauge@127.0.0.1:<port>/<db>`.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("hg_{}_{n}", std::process::id());
        self.psql(&self.url("postgres"), &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// `database_url` with the password in it:
    /// `postgres://hookgauge:<password>@127.0.0.1:<port>/<db>`.
    pub fn url_with_password(&self, database_url: &str) -> String {
        let (scheme, rest) = database_url
            .split_once("://")
            .unwrap_or_else(|| panic!("not a URL: {database_url}"));
        let (user, host) = rest
            .split_once('@')
            .unwrap_or_else(|| panic!("no user in {database_url}"));
        assert!(!user.contains(':'), "{database_url} has a password already");
        format!("{scheme}://{user}:{}@{host}", self.password)
    }

    /// The test role's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A file holding the password (and nothing else, no newline), mode
    /// 0600, owned by the current user: for `[store] password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.password_file
            .get_or_init(|| {
                let path = self.root.join("password");
                write_private(&path, &self.password);
                path
            })
            .clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (pg_ctl stop -m fast), keeping the data.
    pub fn pause(&self) {
        let output = self.pg_ctl_stop("fast");
        if !output.status.success() {
            panic!(
                "pg_ctl stop -m fast failed ({}):\n{}{}\nserver log (end):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&self.read_log(0), 30)
            );
        }
    }

    /// Starts the server stopped by [`Cluster::pause`] again, on the same port.
    pub fn resume(&self) {
        if let Err(failure) = self.pg_ctl_start() {
            panic!("{failure}");
        }
    }

    /// Runs `sql` with psql against `database_url` as the test role
    /// (`-X -A -t -v ON_ERROR_STOP=1`); returns its trimmed output, panics
    /// with psql's errors when it fails.
    pub fn psql(&self, database_url: &str, sql: &str) -> String {
        let output = self.run_psql(database_url, sql, Some(&self.password));
        assert_psql_success(database_url, sql, &output);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    /// psql against `database_url` over TCP, with `password` in `PGPASSWORD`
    /// (none: no password at all, not even from a `~/.pgpass`), `sql` on
    /// its standard input.
    fn run_psql(&self, database_url: &str, sql: &str, password: Option<&str>) -> Output {
        let mut command = Command::new(bin_dir().join("psql"));
        command.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ]);
        command.arg("-d").arg(database_url);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        command
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGPASSFILE", self.root.join("no-pgpass"))
            .env("PGAPPNAME", "hookgauge-tests");
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        run(&mut command, sql)
    }

    /// A server program, run as [`OS_USER`] when the tests run as root.
    fn server_command(&self, program: &str) -> Command {
        let path = bin_dir().join(program);
        let mut command = if self.as_os_user {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.current_dir(&self.server_dir);
        command
    }

    /// Starts the server on a port from `ports` (one that was free a moment
    /// ago), trying the next when it is taken before the server binds it.
    fn start_on_a_free_port(&mut self, mut ports: impl FnMut() -> u16) {
        let mut failures = Vec::new();
        for _ in 0..PORT_TRIES {
            self.port = ports();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(failure) if failure.contains("Address already in use") => {
                    failures.push(failure);
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!(
            "PostgreSQL found its port in use {PORT_TRIES} times:\n{}",
            failures.join("\n")
        );
    }

    /// pg_ctl start on [`Cluster::port`]; the failure with the end of the
    /// server log.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let logged = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let output = run(
            self.server_command("pg_ctl")
                .args(["start", "-w", "-t", PG_CTL_WAIT, "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .arg("-o")
                .arg(format!("-p {}", self.port)),
            "",
        );
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "PostgreSQL ({}) did not start on port {} ({}):\n{}{}\nserver log (end):\n{}",
            bin_dir().display(),
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.read_log(logged), 30)
        ))
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        run(
            self.server_command("pg_ctl")
                .args(["stop", "-w", "-t", PG_CTL_WAIT, "-m", mode, "-D"])
                .arg(&self.data),
            "",
        )
    }

    /// The server log from byte `from` on.
    fn read_log(&self, from: u64) -> String {
        let Ok(mut file) = fs::File::open(&self.log) else {
            return String::from("(no server log)");
        };
        let mut log = Vec::new();
        let _ = file.seek(std::io::SeekFrom::Start(from));
        let _ = file.read_to_end(&mut log);
        String::from_utf8_lossy(&log).into_owned()
    }

    /// The postmaster's process id while the server runs (or its pid file
    /// remains).
    fn postmaster_pid(&self) -> Option<i32> {
        let pid_file = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Stops the server at once and removes every file; only the first
    /// call does anything.
    fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.postmaster_pid().is_some() {
            let output = self.pg_ctl_stop("immediate");
            if !output.status.success() {
                eprintln!(
                    "pg_ctl stop -m immediate ({}): {}",
                    self.data.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            // A server pg_ctl could not stop, if its pid is still this cluster's server.
            if let Some(pid) = self.postmaster_pid() {
                let command_line = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let data = self.data.as_os_str().as_encoded_bytes();
                if command_line.windows(data.len()).any(|w| w == data) {
                    // SAFETY: kill has no memory preconditions; `pid` runs this cluster.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            if e.kind() != ErrorKind::NotFound {
                eprintln!("removing {}: {e}", self.root.display());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has the server
/// programs and psql.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name
                    .split('.')
                    .map(|part| part.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                let bin = entry.path().join("bin");
                ["initdb", "pg_ctl", "postgres", "psql"]
                    .iter()
                    .all(|program| bin.join(program).is_file())
                    .then_some((version, bin))
            })
            .collect();
        found.sort();
        match found.pop() {
            Some((_, bin)) => bin,
            None => panic!(
                "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
                 install Debian's postgresql package (scripts/test does)"
            ),
        }
    })
}

/// The uid and gid of [`OS_USER`].
fn os_user_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, OS_USER])
            .output()
            .expect("run id");
        assert!(
            output.status.success(),
            "the tests run as root, where initdb refuses to run, and there is no `{OS_USER}` \
             OS user to run PostgreSQL as: install Debian's postgresql package (scripts/test does)"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    hex::encode(bytes)
}

/// Writes `contents` to a new file of mode 0600.
fn write_private(path: &Path, contents: &str) {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_psql_success(database_url: &str, sql: &str, output: &Output) {
    assert!(
        output.status.success(),
        "psql on {database_url} failed ({}):\n{}\nSQL: {sql}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` with `input` on its standard input, within [`RUN_LIMIT`]:
/// past it, the command's process group is killed and this panics. Output
/// goes to unnamed temporary files (no reader threads, nothing left behind);
/// a server that pg_ctl starts has its own session and is not killed.
fn run(command: &mut Command, input: &str) -> Output {
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    command
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .process_group(0);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_owned();
        // A thread, so that a command that does not read cannot block the limit.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill has no memory preconditions; the group is the child's own.
            unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            panic!("{command:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |file: &mut fs::File| {
        let mut bytes = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

// The tests of the cluster itself.

/// Whether a TCP connection to the loopback `port` is refused.
fn refused(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
        Ok(_) => false,
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
    }
}

/// Whether process `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

const USER_TABLES: &str =
    "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";

#[test]
fn shared_cluster_answers_on_a_fresh_database() {
    let cluster = Cluster::shared();
    assert!(
        std::ptr::eq(cluster, Cluster::shared()),
        "one shared cluster"
    );
    let url = cluster.database();
    assert_eq!(
        url,
        format!(
            "postgres://hookgauge@127.0.0.1:{}/{}",
            cluster.port(),
            url.rsplit('/').next().unwrap()
        )
    );
    assert_eq!(cluster.psql(&url, "SELECT 1"), "1");
    assert_eq!(cluster.psql(&url, "SELECT current_user"), ROLE);
    assert_eq!(
        cluster.psql(
            &url,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ),
        "f",
        "the test role is not a superuser"
    );
    assert_eq!(cluster.psql(&url, "SHOW listen_addresses"), "127.0.0.1");
    // The Unix socket is the cluster's own (reading the setting needs more
    // than the test role has).
    let socket = format!(".s.PGSQL.{}", cluster.port());
    assert!(cluster.server_dir.join(&socket).exists(), "{socket}");
    assert!(!Path::new("/var/run/postgresql").join(&socket).exists());
    assert_eq!(cluster.psql(&url, "SHOW max_connections"), "200");
    assert_eq!(cluster.psql(&url, "SHOW shared_buffers"), "32MB");
    // Several statements, each one's result on its own line.
    assert_eq!(cluster.psql(&url, "SELECT 1; SELECT 2;"), "1\n2");
}

#[test]
fn each_database_is_new_empty_and_owned_by_the_test_role() {
    let cluster = Cluster::shared();
    let first = cluster.database();
    let second = cluster.database();
    assert_ne!(first, second);
    for url in [&first, &second] {
        assert_eq!(cluster.psql(url, USER_TABLES), "0", "{url} is empty");
        assert_eq!(
            cluster.psql(
                url,
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ),
            ROLE
        );
    }
    cluster.psql(
        &first,
        "CREATE TABLE only_here (n integer); INSERT INTO only_here VALUES (1)",
    );
    assert_eq!(cluster.psql(&first, "SELECT n FROM only_here"), "1");
    assert_eq!(cluster.psql(&second, USER_TABLES), "0");
}

#[test]
fn the_password_is_required() {
    let cluster = Cluster::shared();
    let url = cluster.database();

    let wrong = cluster.run_psql(&url, "SELECT 1", Some("not-the-password"));
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"hookgauge\""),
        "{stderr}"
    );

    let none = cluster.run_psql(&url, "SELECT 1", None);
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("no password supplied"), "{stderr}");

    let with_password = cluster.url_with_password(&url);
    assert_eq!(
        with_password,
        url.replacen(
            "postgres://hookgauge@",
            &format!("postgres://hookgauge:{}@", cluster.password()),
            1
        )
    );
    let output = cluster.run_psql(&with_password, "SELECT 1", None);
    assert_psql_success(&with_password, "SELECT 1", &output);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");

    let file = cluster.password_file();
    assert_eq!(file, cluster.password_file());
    assert_eq!(fs::read_to_string(&file).unwrap(), cluster.password());
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(cluster.password().len() >= 32);
}

#[test]
fn paused_cluster_refuses_connections_and_resumes_on_its_port_with_its_data() {
    let cluster = Cluster::start();
    let url = cluster.database();
    cluster.psql(
        &url,
        "CREATE TABLE kept (n integer); INSERT INTO kept VALUES (7)",
    );
    let port = cluster.port();

    cluster.pause();
    assert!(
        refused(port),
        "port {port} refuses connections while paused"
    );
    let output = cluster.run_psql(&url, "SELECT 1", Some(cluster.password()));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");

    cluster.resume();
    assert_eq!(cluster.port(), port);
    assert!(!refused(port));
    assert_eq!(cluster.psql(&url, "SELECT n FROM kept"), "7");
    // And once more.
    cluster.pause();
    cluster.resume();
    assert_eq!(cluster.psql(&url, "SELECT count(*) FROM kept"), "1");
}

#[test]
fn a_port_taken_before_the_server_binds_it_is_replaced() {
    let mut cluster = Cluster::init();
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut offered = Vec::new();
    cluster.start_on_a_free_port(|| {
        let port = if offered.is_empty() {
            taken_port
        } else {
            free_port()
        };
        offered.push(port);
        port
    });
    assert_eq!(offered.len(), 2, "{offered:?}");
    assert_eq!(cluster.port(), offered[1]);
    assert!(cluster
        .read_log(0)
        .contains("could not bind IPv4 address \"127.0.0.1\": Address already in use"));
    cluster.create_role();
    let url = cluster.database();
    assert_eq!(cluster.psql(&url, "SELECT 1"), "1");
    drop(taken);
}

#[test]
fn dropping_a_cluster_stops_its_server_and_removes_its_files() {
    let cluster = Cluster::start();
    let url = cluster.database();
    assert_eq!(cluster.psql(&url, "SELECT 1"), "1");
    let root = cluster.root.clone();
    let port = cluster.port();
    let pid = cluster.postmaster_pid().expect("the server runs");
    assert!(running(pid));
    assert!(root.join("server/data/PG_VERSION").is_file());

    drop(cluster);
    assert!(!root.exists(), "{} is removed", root.display());
    assert!(refused(port), "port {port} refuses connections");
    // pg_ctl returns once the pid file is gone, a moment before the process.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(pid), "the postmaster {pid} is gone");
}
