//! The SQLite store's checkpoints: the thread that copies the WAL into the
//! database file and syncs it, off the path of a delivery, how it is
//! scheduled, and the WAL restart it hands to the writer (`WalRestart`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// WAL size (in frames) past which the WAL is started again from its
/// beginning (see [`WalRestart`]).
pub(super) const WAL_RESTART_FRAMES: i64 = 16_384;
/// Pause of the checkpoint thread after a pass that copied frames (the
/// writer is busy: keep the backlog small) and after one that did not.
const CHECKPOINT_BUSY_PAUSE: Duration = Duration::from_millis(20);
const CHECKPOINT_IDLE_PAUSE: Duration = Duration::from_millis(100);
/// The writer's part of a restart is asked for once a pass began with at
/// most this many frames appended since the previous one (or after
/// `MAX_CHASES` passes in a row that did not get there).
const RESTART_BACKLOG_FRAMES: i64 = 128;
const MAX_CHASES: u32 = 4;
/// How long the checkpoint thread leaves the WAL to the writer once it has
/// asked for a restart; an idle writer does not answer, and the WAL then
/// restarts by itself at the next write after a complete pass.
const RESTART_HANDOVER: Duration = Duration::from_millis(100);
/// How often the checkpoint thread looks whether the writer took its part.
const HANDOVER_POLL: Duration = Duration::from_millis(2);

/// The WAL restart, shared by the writer and the checkpoint thread.
///
/// SQLite starts the WAL again from its beginning when a write transaction
/// begins with every frame copied into the database. The checkpoint thread
/// copies frames while the writer appends, so under steady load it never
/// copies the last ones and the WAL would grow without bound. Once the WAL
/// passes [`WAL_RESTART_FRAMES`], the checkpoint thread stops and sets
/// `due`; before its next transaction the writer copies the few frames
/// appended since the thread's last pass (a small checkpoint, not the whole
/// WAL and its fsyncs on the ack path, which is what SQLite's own
/// auto-checkpoint on the writer did), and that transaction restarts the WAL.
pub struct WalRestart {
    due: AtomicBool,
    pacing: pacing::Pacing,
    /// WAL frames past which the restart is asked for.
    frames: i64,
}

impl Default for WalRestart {
    fn default() -> Self {
        WalRestart::after(WAL_RESTART_FRAMES)
    }
}

impl WalRestart {
    fn after(frames: i64) -> Self {
        WalRestart {
            due: AtomicBool::new(false),
            pacing: pacing::Pacing::default(),
            frames,
        }
    }

    /// The writer's part of a restart, between two of its transactions on
    /// `conn`: copies what the thread's passes left, so that the next
    /// transaction starts the WAL again.
    pub(super) fn finish(&self, conn: &Connection) {
        if !self.due.load(Ordering::Acquire) {
            return;
        }
        match checkpoint(conn) {
            // The checkpoint thread is in a pass: at the next transaction.
            Ok(pass) if pass.busy => {}
            Ok(_) => self.due.store(false, Ordering::Release),
            Err(error) => {
                tracing::debug!(error = %error, "WAL restart checkpoint failed");
                self.due.store(false, Ordering::Release);
            }
        }
    }

    /// Tells the checkpoint thread's pacing the size of a batch (nothing to
    /// do where no checkpoint thread runs: PostgreSQL).
    pub(super) fn batch(&self, size: usize) {
        self.pacing.batch(size);
    }
}

/// What a `PASSIVE` checkpoint did.
struct Pass {
    /// Another connection was checkpointing: nothing was done.
    busy: bool,
    /// Frames in the WAL, and how many of them are in the database.
    frames: i64,
    copied: i64,
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Pass {
            busy: row.get::<_, i64>(0)? != 0,
            frames: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

/// Copies committed WAL frames into the database file from its own
/// connection and syncs them, so that the writer never does it (nor its
/// fsyncs) while deliveries wait for their commit, but for the last frames
/// of a restart. PASSIVE: never blocks the writer. Scheduled by `pacing`.
pub struct Checkpointer {
    path: std::path::PathBuf,
    busy_timeout: Duration,
    conn: Option<Connection>,
    /// The database file, for syncing what the passes copied.
    file: Option<std::fs::File>,
    restart: Arc<WalRestart>,
    /// Frames in the WAL and frames copied at the last pass, and when the
    /// restart was asked for.
    frames: i64,
    copied: i64,
    asked: Option<Instant>,
    /// Passes run back to back to shrink what the writer's part copies.
    chases: u32,
}

impl Checkpointer {
    pub fn new(path: std::path::PathBuf, busy_timeout: Duration, restart: Arc<WalRestart>) -> Self {
        Checkpointer {
            path,
            busy_timeout,
            conn: None,
            file: None,
            restart,
            frames: 0,
            copied: 0,
            asked: None,
            chases: 0,
        }
    }

    /// Runs passes until `stop` is set.
    pub fn run_until(&mut self, stop: &AtomicBool) {
        self.restart.pacing.started();
        while !stop.load(Ordering::Acquire) {
            let pause = self.step();
            std::thread::sleep(pause);
        }
    }

    /// One step: a pass, or waiting for the writer's part of a restart.
    /// Returns how long to wait before the next.
    fn step(&mut self) -> Duration {
        if let Some(asked) = self.asked {
            if self.restart.due.load(Ordering::Acquire) && asked.elapsed() < RESTART_HANDOVER {
                return HANDOVER_POLL;
            }
            self.asked = None;
        }
        let Some(conn) = self.connection() else {
            return CHECKPOINT_IDLE_PAUSE;
        };
        let pass = match checkpoint(conn) {
            Ok(pass) => pass,
            Err(error) => {
                tracing::debug!(error = %error, "Checkpoint failed; reopening");
                self.conn = None;
                return CHECKPOINT_IDLE_PAUSE;
            }
        };
        let progressed = pass.copied != self.copied;
        if progressed {
            self.sync_database();
        }
        // Frames the writer appended since the previous pass began: about
        // what the writer's part would copy if asked now.
        let appended = pass.frames - self.frames.min(pass.frames);
        (self.frames, self.copied) = (pass.frames, pass.copied);
        if pass.frames >= self.restart.frames {
            if appended > RESTART_BACKLOG_FRAMES && self.chases < MAX_CHASES {
                // Another pass at once: it has less to copy than this one
                // had, and leaves less behind for the writer.
                self.chases += 1;
                return Duration::ZERO;
            }
            self.chases = 0;
            self.restart.due.store(true, Ordering::Release);
            self.asked = Some(Instant::now());
            return HANDOVER_POLL;
        }
        if progressed && !pass.busy {
            CHECKPOINT_BUSY_PAUSE
        } else {
            CHECKPOINT_IDLE_PAUSE
        }
    }

    /// Writes the pages a pass copied to the disk. SQLite syncs the database
    /// file only after a pass that reached the end of the WAL, which under
    /// steady load is the writer's part of a restart: it would then write
    /// every page copied since the last restart, on the ack path.
    fn sync_database(&mut self) {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        if let Some(file) = &self.file {
            if let Err(error) = file.sync_data() {
                tracing::debug!(error = %error, "Syncing the database file failed");
                self.file = None;
            }
        }
    }

    fn connection(&mut self) -> Option<&Connection> {
        if self.conn.is_none() {
            // The writer creates the file; until then there is nothing to do.
            if !self.path.exists() {
                return None;
            }
            match Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| conn.busy_timeout(self.busy_timeout).map(|_| conn))
            {
                Ok(conn) => self.conn = Some(conn),
                Err(error) => {
                    tracing::debug!(error = %error, "Checkpointer cannot open the store yet");
                    return None;
                }
            }
        }
        self.conn.as_ref()
    }
}

/// How the checkpoint thread is scheduled, decided by the writer.
///
/// While deliveries come one at a time, the thread is in the idle class: it
/// runs only on a CPU that no thread of a delivery's path (HTTP worker,
/// writer) wants, so a delivery never waits for a CPU behind a pass. Once
/// deliveries queue (a batch of more than one), every CPU is busy and an
/// idle-class thread would hardly run, leaving the whole WAL to the writer's
/// part of the restart; the thread then runs in the normal class at a lower
/// priority, until no batch has queued for `CALM_AFTER`.
mod pacing {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const CALM_AFTER: Duration = Duration::from_secs(1);
    #[cfg(target_os = "linux")]
    const NICE: libc::c_int = 10;

    #[derive(Default)]
    pub struct Pacing {
        /// The checkpoint thread's id (0: not started, or kept in the
        /// normal class).
        tid: AtomicI32,
        /// Only the writer changes it, once per batch.
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// The thread is in the normal class.
        normal: bool,
        /// When a batch last had more than one delivery.
        last_queue: Option<Instant>,
    }

    impl Pacing {
        /// Called by the checkpoint thread when it starts. Where the process
        /// may not leave the idle class again (an unprivileged process whose
        /// RLIMIT_NICE does not allow `NICE`, as in most containers), the
        /// thread stays in the normal class at `NICE`: an idle-class thread
        /// that cannot leave it would starve under load.
        pub fn started(&self) {
            let tid = current_thread();
            if can_leave_idle() && set_idle(tid, true) {
                self.tid.store(tid, Ordering::Release);
            } else {
                set_idle(tid, false);
            }
        }

        /// Called by the writer with each batch's size.
        pub fn batch(&self, size: usize) {
            let tid = self.tid.load(Ordering::Acquire);
            if tid == 0 {
                return;
            }
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if size > 1 {
                state.last_queue = Some(now);
                if !state.normal {
                    state.normal = true;
                    set_idle(tid, false);
                }
            } else if state.normal
                && state
                    .last_queue
                    .is_none_or(|at| now.duration_since(at) >= CALM_AFTER)
            {
                state.normal = false;
                set_idle(tid, true);
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn current_thread() -> i32 {
        // SAFETY: takes no argument and cannot fail.
        unsafe { libc::gettid() }
    }

    /// Whether a thread of this process may go into the idle class and
    /// back, tried on a thread of its own that ends right after.
    fn can_leave_idle() -> bool {
        std::thread::Builder::new()
            .name("hookgauge-probe".into())
            .spawn(|| {
                let tid = current_thread();
                set_idle(tid, true) && set_idle(tid, false)
            })
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    }

    /// Moves thread `tid` of this process to the idle class, or to the normal
    /// class at niceness `NICE`; false when refused (it is then as it was).
    #[cfg(target_os = "linux")]
    fn set_idle(tid: i32, idle: bool) -> bool {
        let param = libc::sched_param { sched_priority: 0 };
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        // SAFETY: `param` outlives the call; the calls act on a thread of
        // this process, by id, and touch no memory of ours otherwise.
        let refused = unsafe {
            libc::sched_setscheduler(tid, policy, &param) != 0
                || (!idle && libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) != 0)
        };
        if refused {
            tracing::debug!(
                idle,
                error = %std::io::Error::last_os_error(),
                "A thread's scheduling was not changed"
            );
        }
        !refused
    }

    #[cfg(not(target_os = "linux"))]
    fn current_thread() -> i32 {
        0
    }

    #[cfg(not(target_os = "linux"))]
    fn set_idle(_tid: i32, _idle: bool) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Checkpointer, WalRestart};
    use crate::store::sqlite::Database;
    use crate::store::{Location, RestoreWindows, StoreConfig, Synchronous};

    fn config(path: &std::path::Path) -> StoreConfig {
        StoreConfig {
            location: Location::Sqlite(path.to_owned()),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(1),
            max_body_bytes: 1 << 16,
            max_unauthenticated_rows: 1000,
            windows: RestoreWindows {
                commit_window: Duration::from_secs(3600),
                exposure_window: Duration::from_secs(3600),
            },
            failure_link_window: Duration::from_secs(3600),
        }
    }

    fn write(db: &mut Database, n: i64) {
        db.transaction(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO probe (id, at) VALUES (?1, ?1)",
                &[&n],
            )
            .map(|_| ())
        })
        .unwrap();
    }

    /// Under steady load the checkpoint thread's pass never copies the last
    /// frames (the writer appends during it), so SQLite would never start
    /// the WAL again. Once the thread asks, the writer's next transaction
    /// copies the rest first and starts the WAL from its beginning.
    #[test]
    fn a_due_restart_starts_the_wal_again_at_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let restart = Arc::new(WalRestart::after(16));
        let mut db = Database::open(&path, &config(&path), Arc::clone(&restart)).unwrap();
        let mut checkpointer =
            Checkpointer::new(path.clone(), Duration::from_secs(1), Arc::clone(&restart));
        for n in 0..20 {
            write(&mut db, n);
        }
        // A reader's snapshot stands for the writes the pass cannot copy:
        // it copies up to the snapshot only.
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM probe", [], |r| r.get(0))
            .unwrap();
        for n in 20..30 {
            write(&mut db, n);
        }
        checkpointer.step();
        assert!(restart.due.load(Ordering::Acquire), "restart not asked");
        let before = checkpointer.frames;
        assert!(checkpointer.copied < before, "the pass copied every frame");
        reader.execute_batch("COMMIT").unwrap();

        write(&mut db, 30);
        assert!(
            !restart.due.load(Ordering::Acquire),
            "the writer left it due"
        );
        checkpointer.asked = None;
        checkpointer.step();
        assert!(
            checkpointer.frames < 16,
            "the WAL went on from {before} to {} frames instead of starting again",
            checkpointer.frames
        );
        assert_eq!(checkpointer.copied, checkpointer.frames);
        // The file is as long as it was when the restart was asked.
        assert!(wal_frames(&path) <= before as u64);
    }

    /// Frames in the WAL file, from its size (a 32-byte header, then frames
    /// of a 24-byte header and a page).
    fn wal_frames(path: &std::path::Path) -> u64 {
        let wal = path.with_extension("db-wal");
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        size.saturating_sub(32) / (24 + 4096)
    }
}
