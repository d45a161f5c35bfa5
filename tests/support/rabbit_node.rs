//! A private RabbitMQ node for chaos tests: its own node name, AMQP and
//! distribution ports, Erlang cookie, data and log folders, so a test may
//! stop, start or kill it without touching the shared broker on 5672.
//!
//! The node runs in the foreground as a child process in a process group of
//! its own; dropping a [`PrivateRabbit`] kills that group and removes the
//! folder (kept with `GENFLEET_KEEP_TEST_DIRS`), so a failing test leaks
//! neither a node nor its files.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long a node may take to boot (about 3-7 s on an idle 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `rabbitmqctl` call may take before it is killed.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

static NODES: AtomicU32 = AtomicU32::new(0);

/// Where the Debian package keeps the real scripts: `/usr/sbin/rabbitmq*`
/// are wrappers that `su` to the `rabbitmq` user (and its cookie).
fn script(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// Whether a process runs (a zombie, reparented and not yet reaped, does
/// not: it holds no sockets any more).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A RabbitMQ node of our own, killed and removed on drop.
pub struct PrivateRabbit {
    pub node: String,
    pub amqp_port: u16,
    pub dist_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRabbit {
    /// Starts a fresh node and waits until it accepts AMQP connections.
    ///
    /// # Panics
    /// When the node does not boot within 90 s (after two retries on fresh
    /// ports if it exits early), with the tail of its log.
    pub fn start() -> PrivateRabbit {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut rabbit = PrivateRabbit::prepare();
            rabbit.spawn();
            match rabbit.wait_booted() {
                Ok(()) => return rabbit,
                // Exited early: most likely a port taken between our probe
                // and its bind. Try again on fresh ports.
                Err(tail) if rabbit.child_exited() => failures.push(tail),
                Err(tail) => panic!(
                    "private RabbitMQ node {} not up after {BOOT_TIMEOUT:?}:\n{tail}",
                    rabbit.node
                ),
            }
        }
        panic!(
            "private RabbitMQ node exited during boot three times:\n{}",
            failures.join("\n----\n")
        );
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Stops the RabbitMQ application (the Erlang node stays up): every
    /// client connection drops and the AMQP port closes.
    pub fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]);
        let deadline = Instant::now() + CTL_TIMEOUT;
        while self.accepts_amqp() {
            assert!(
                Instant::now() < deadline,
                "AMQP port {} still open after stop_app",
                self.amqp_port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the application again and waits until the AMQP port accepts
    /// connections.
    pub fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]);
        self.wait_amqp(CTL_TIMEOUT);
    }

    /// Kills the whole node (SIGKILL to its process group), as a crash
    /// would; [`PrivateRabbit::restart`] boots it again on the same data.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let beam = self.beam_pid();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
        // beam.smp is the script's child, not ours: waiting for the script
        // does not mean the VM is gone, and a restart probing the AMQP port
        // would find the dying VM's listener.
        let deadline = Instant::now() + Duration::from_secs(15);
        while beam.is_some_and(alive) || self.accepts_amqp() {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("rabbit.pid"));
    }

    /// The Erlang VM's pid, from the pid file the node writes at boot.
    pub fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("rabbit.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Boots the node again with the same name, ports and data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(tail) = self.wait_booted() {
            panic!(
                "private RabbitMQ node {} did not restart:\n{tail}",
                self.node
            );
        }
    }

    /// Runs `rabbitmqctl -n NODE ARGS` against this node and panics unless
    /// it succeeds.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let out = self.try_rabbitmqctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed ({}):\n{}{}\nnode log:\n{}",
            self.node,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `rabbitmqctl -q -n NODE ARGS`, killed after 60 s.
    pub fn try_rabbitmqctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(script("rabbitmqctl"));
        command.args(["-q", "-n", &self.node]).args(args);
        self.node_env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rabbitmqctl runs");
        let pid = child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let output = std::thread::spawn(move || {
            let output = child.wait_with_output();
            let _ = done_tx.send(());
            output
        });
        if done_rx.recv_timeout(CTL_TIMEOUT).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        output
            .join()
            .expect("rabbitmqctl waiter")
            .expect("rabbitmqctl output")
    }

    /// The last 60 lines of the node's log (its stdout, where it logs too).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn prepare() -> PrivateRabbit {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!(
            "{}-{}-{}",
            std::process::id(),
            NODES.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000_000
        );
        let dir = std::env::temp_dir().join(format!("genfleet-chaos-{id}"));
        std::fs::create_dir_all(dir.join("mnesia")).expect("node dir");
        std::fs::create_dir_all(dir.join("log")).expect("node log dir");
        let amqp_port = free_port();
        let mut dist_port = free_port();
        while dist_port == amqp_port {
            dist_port = free_port();
        }
        // Our own cookie in our own HOME, written before the node and the
        // CLI start: both would race to create it otherwise. Mode 0400, or
        // Erlang refuses it.
        let mut cookie = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(dir.join(".erlang.cookie"))
            .expect("cookie file");
        write!(cookie, "GENFLEETCHAOS{}", nanos % 1_000_000_000_000_000).expect("cookie");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n"),
        )
        .expect("config file");
        PrivateRabbit {
            node: format!("genfleet-chaos-{id}@localhost"),
            amqp_port,
            dist_port,
            dir,
            child: None,
        }
    }

    /// The environment that points the scripts at this node and away from
    /// the system one (`/etc/rabbitmq/rabbitmq-env.conf`, its cookie).
    fn node_env(&self, command: &mut Command) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                command.env_remove(key);
            }
        }
        let dir = &self.dir;
        command
            .current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            // Explicit: the default, AMQP port + 20000, overflows past 45535.
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
            // Distribution on loopback only, as the system node does.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // The CLI's own distribution ports: 35672-35682 by default, a
            // narrow range for many tests calling rabbitmqctl at once.
            .env("RABBITMQ_CTL_DIST_PORT_MIN", "35672")
            .env("RABBITMQ_CTL_DIST_PORT_MAX", "35772")
            // Only used if no epmd runs yet and the node starts one.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    fn spawn(&mut self) {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.out"))
            .expect("node log file");
        let err = out.try_clone().expect("node log file");
        let mut command = Command::new(script("rabbitmq-server"));
        self.node_env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Its own process group: the script, beam.smp and their children
            // die together on drop.
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        self.child = Some(child);
    }

    fn child_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the AMQP port, then confirms with `await_startup`
    /// (which fails at once, rather than waits, while the node has not yet
    /// registered with epmd). Err: the log tail.
    fn wait_booted(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if self.child_exited() {
                return Err(format!("node process exited:\n{}", self.log_tail()));
            }
            if self.accepts_amqp() {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.try_rabbitmqctl(&["await_startup", "--timeout", "60"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "await_startup: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ))
        }
    }

    fn wait_amqp(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.accepts_amqp() {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ node {} does not accept AMQP on {} after {within:?}:\n{}",
                self.node,
                self.amqp_port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn accepts_amqp(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.amqp_port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("GENFLEET_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
