//! One `redis-server` or `redis-sentinel` child process: its directory,
//! configuration, logs, and signals.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::error::HarnessError;

/// The two kinds of processes of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Node,
    Sentinel,
}

impl Kind {
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Kind::Node => "redis-server",
            Kind::Sentinel => "redis-sentinel",
        }
    }
}

/// A process of the cluster and the temp dir that holds its configuration,
/// logs and data; the directory outlives kills and restarts.
pub(crate) struct Proc {
    pub kind: Kind,
    pub port: u16,
    pub dir: TempDir,
    pub conf: PathBuf,
    pub log: PathBuf,
    /// What the process wrote to stdout and stderr: errors before the
    /// `logfile` directive takes effect (a bad configuration, for example).
    pub stdio: PathBuf,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.binary(), self.addr())
    }
}

impl Proc {
    /// A process not started yet, in a fresh temp dir.
    pub(crate) fn new(kind: Kind, port: u16) -> Result<Self, HarnessError> {
        let dir =
            tempfile::Builder::new().prefix(&format!("tokenplane-{}-", kind.binary())).tempdir().map_err(
                |source| HarnessError::Io { what: "creating a temp dir", path: std::env::temp_dir(), source },
            )?;
        let (conf, log) = match kind {
            Kind::Node => ("redis.conf", "redis.log"),
            Kind::Sentinel => ("sentinel.conf", "sentinel.log"),
        };
        Ok(Proc {
            kind,
            port,
            conf: dir.path().join(conf),
            log: dir.path().join(log),
            stdio: dir.path().join("stdio.log"),
            dir,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
        })
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the process in the foreground on its configuration file, with
    /// `extra` command-line options (`--replicaof 127.0.0.1 6379`). A
    /// restarted process appends to the logs of its earlier runs.
    pub(crate) fn spawn(&self, binary: &Path, extra: &[String]) -> Result<(), HarnessError> {
        let stdout = File::options().create(true).append(true).open(&self.stdio).map_err(|source| {
            HarnessError::Io { what: "opening the stdout log", path: self.stdio.clone(), source }
        })?;
        let stderr = stdout.try_clone().map_err(|source| HarnessError::Io {
            what: "duplicating the stdout log",
            path: self.stdio.clone(),
            source,
        })?;
        let child = Command::new(binary)
            .arg(&self.conf)
            .args(extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HarnessError::Process { what: "start", process: self.to_string(), source })?;
        self.paused.store(false, Ordering::SeqCst);
        *self.lock() = Some(child);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the child as it was: usable.
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `None` while the process runs (or is paused), else how it ended:
    /// its exit status, or "not running" once the harness killed it.
    pub(crate) fn exit_status(&self) -> Option<String> {
        let mut guard = self.lock();
        match guard.as_mut() {
            None => Some("not running".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(e) => Some(format!("unknown status: {e}")),
            },
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// SIGKILLs the process and waits until it is gone.
    pub(crate) async fn kill(&self) -> Result<(), HarnessError> {
        let child = self.lock().take();
        let Some(mut child) = child else {
            return Err(HarnessError::WrongState {
                process: self.to_string(),
                state: "not running",
                hint: "start it again with restart_node() before killing it",
            });
        };
        child.start_kill().map_err(|source| HarnessError::Process {
            what: "kill",
            process: self.to_string(),
            source,
        })?;
        child.wait().await.map_err(|source| HarnessError::Process {
            what: "wait for the end of",
            process: self.to_string(),
            source,
        })?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Sends SIGSTOP (`pause`) or SIGCONT (`!pause`).
    pub(crate) fn signal_pause(&self, pause: bool) -> Result<(), HarnessError> {
        let guard = self.lock();
        let pid = guard.as_ref().and_then(Child::id).and_then(|id| i32::try_from(id).ok());
        let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) else {
            return Err(HarnessError::WrongState {
                process: self.to_string(),
                state: "not running",
                hint: "start it again with restart_node() first",
            });
        };
        let (signal, what) = if pause {
            (rustix::process::Signal::STOP, "pause (SIGSTOP)")
        } else {
            (rustix::process::Signal::CONT, "resume (SIGCONT)")
        };
        rustix::process::kill_process(pid, signal).map_err(|e| HarnessError::Process {
            what,
            process: self.to_string(),
            source: e.into(),
        })?;
        self.paused.store(pause, Ordering::SeqCst);
        Ok(())
    }

    /// Kills the process without waiting (for `Drop`).
    pub(crate) fn start_kill(&self) {
        if let Some(child) = self.lock().as_mut() {
            let _ = child.start_kill();
        }
    }

    /// Waits until `deadline` for a killed process to be reaped, so its temp
    /// dir is removed after it stopped writing there (for `Drop`).
    pub(crate) fn reap(&self, deadline: Instant) {
        let Some(mut child) = self.lock().take() else { return };
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
    }

    /// The last `lines` lines of the log and of stdout/stderr, headed by the
    /// process and the log's path.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let mut out = format!("==> {} ({}) <==\n", self, self.log.display());
        for file in [&self.stdio, &self.log] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Whether the log says the port was taken between our probe and the
    /// process's bind.
    pub(crate) fn port_was_taken(&self) -> bool {
        [&self.log, &self.stdio]
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("Address already in use")))
    }
}

/// A loopback port that was free a moment ago: bind port 0, read the port
/// the kernel chose, release it. Another process may take it before Redis
/// binds it; callers retry with a new port when that happens.
pub fn free_port() -> Result<u16, HarnessError> {
    let probe = "a probe socket on 127.0.0.1:0 (to find a free port)";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| HarnessError::Process {
        what: "bind",
        process: probe.to_owned(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| HarnessError::Process {
        what: "read the port of",
        process: probe.to_owned(),
        source,
    })?;
    Ok(addr.port())
}

/// The path of `binary` on `PATH`.
pub(crate) fn find_binary(binary: &'static str) -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::BinaryNotFound { binary })
}
