//! A private clamd for tests: its own folder with a `clamd.conf`, the
//! committed EICAR signature database (`signatures/genfleet-eicar.ndb`, the
//! only database it loads: no download), a unix socket and a TCP port on
//! loopback. Started in the foreground as a child process; dropping a
//! [`PrivateClamd`] kills it and removes the folder (kept with
//! `GENFLEET_KEEP_TEST_DIRS`).
//!
//! Only behind the `testing` feature (and this crate's own tests): the
//! binary never starts a clamd.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The signature database the tests ship: one body signature for the EICAR
/// test string, reported as `Eicar-Test-Signature.UNOFFICIAL`.
pub const EICAR_NDB: &str = include_str!("../signatures/genfleet-eicar.ndb");

/// The name clamd reports for a hit of [`EICAR_NDB`] (databases clamd did
/// not sign get the `.UNOFFICIAL` suffix).
pub const EICAR_SIGNATURE: &str = "Eicar-Test-Signature.UNOFFICIAL";

/// The 68-byte EICAR test string.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// clamd with a one-signature database starts in a second or two; a busy
/// 2-core CI machine compiling tests beside it may take far longer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The stream limit the private clamd is configured with.
pub const STREAM_MAX_BYTES: usize = 30 * 1024 * 1024;

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// Where Debian's `clamav-daemon` installs clamd.
pub fn clamd_binary() -> PathBuf {
    let debian = Path::new("/usr/sbin/clamd");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("clamd")
    }
}

/// A clamd of our own, killed and removed on drop.
pub struct PrivateClamd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub tcp_port: u16,
    child: Option<Child>,
}

impl PrivateClamd {
    /// Starts clamd and waits until it answers PING on its unix socket.
    ///
    /// # Panics
    /// When clamd does not start within 60 s (after two more tries on
    /// fresh ports if it exits early, e.g. a port taken between our probe
    /// and its bind), with the tail of its log.
    pub fn start() -> PrivateClamd {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut clamd = PrivateClamd::spawn();
            match clamd.wait_ready() {
                Ok(()) => return clamd,
                Err(tail) if clamd.exited() => failures.push(tail),
                Err(tail) => panic!("private clamd not ready after {READY_TIMEOUT:?}:\n{tail}"),
            }
        }
        panic!(
            "private clamd exited during start three times:\n{}",
            failures.join("\n----\n")
        );
    }

    /// `tcp:127.0.0.1:<port>`.
    pub fn tcp_address(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.tcp_port)
    }

    /// `unix:<dir>/clamd.sock`.
    pub fn unix_address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("clamd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn() -> PrivateClamd {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "genfleet-clamd-{}-{}-{nanos}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::SeqCst)
        ));
        let db = dir.join("db");
        std::fs::create_dir_all(&db).expect("clamd folder");
        std::fs::write(db.join("genfleet-eicar.ndb"), EICAR_NDB).expect("signature database");
        let socket = dir.join("clamd.sock");
        let tcp_port = free_port();
        // Foreground: the child is clamd itself, so killing it stops it.
        // No `User`: clamd runs as whoever starts it (root on CI works).
        // ReadTimeout bounds a test client that stops sending.
        let conf = format!(
            "Foreground yes\n\
             LocalSocket {socket}\n\
             TCPSocket {tcp_port}\n\
             TCPAddr 127.0.0.1\n\
             DatabaseDirectory {db}\n\
             StreamMaxLength {max}M\n\
             MaxThreads 4\n\
             ReadTimeout 30\n\
             SelfCheck 3600\n\
             LogFile {log}\n\
             LogTime yes\n\
             PidFile {pid}\n",
            socket = socket.display(),
            db = db.display(),
            max = STREAM_MAX_BYTES / (1024 * 1024),
            log = dir.join("clamd.log").display(),
            pid = dir.join("clamd.pid").display(),
        );
        let conf_path = dir.join("clamd.conf");
        std::fs::write(&conf_path, conf).expect("clamd.conf");
        let child = spawn_child(&conf_path);
        PrivateClamd {
            dir,
            socket,
            tcp_port,
            child: Some(child),
        }
    }

    /// Kills clamd (as a crash would): its socket and port stop answering.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts clamd again on the same socket, port and database, and waits
    /// until it answers.
    ///
    /// # Panics
    /// When it does not answer within 60 s.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_child(&self.dir.join("clamd.conf")));
        if let Err(tail) = self.wait_ready() {
            panic!("private clamd not ready again:\n{tail}");
        }
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if self.exited() {
                return Err(format!("clamd exited:\n{}", self.log_tail()));
            }
            if ping(&self.socket) && self.tcp_accepts() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.log_tail())
    }

    fn tcp_accepts(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.tcp_port)).is_ok()
    }
}

fn spawn_child(conf: &Path) -> Child {
    Command::new(clamd_binary())
        .arg("--config-file")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); install the clamav-daemon package",
                clamd_binary().display()
            )
        })
}

/// `zPING` on the unix socket answered `PONG`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply.starts_with(b"PONG")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for PrivateClamd {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("GENFLEET_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
