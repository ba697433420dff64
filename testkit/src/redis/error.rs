//! What can go wrong while running a test cluster, each error saying what
//! failed and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// An error of the Redis test harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary the harness runs is not installed.
    #[error(
        "{binary} not found on PATH: run hack/test.sh, which installs it \
         (Debian packages redis-server and redis-sentinel)"
    )]
    BinaryNotFound {
        /// `redis-server` or `redis-sentinel`.
        binary: &'static str,
    },

    /// A file or directory of the harness could not be created or written.
    #[error("{what} ({}): {source}: check that the temp directory is writable and not full", path.display())]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The operating system refused to start or signal a process.
    #[error("could not {what} {process}: {source}")]
    Process {
        /// What the harness tried: "start", "kill", "pause", ...
        what: &'static str,
        /// The process, as `redis-server 127.0.0.1:port`.
        process: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A process exited while the harness waited for it to come up.
    #[error("{process} exited while starting ({status}); its log ends with:\n{log_tail}")]
    Exited {
        /// The process, as `redis-server 127.0.0.1:port`.
        process: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log and of its stdout/stderr.
        log_tail: String,
    },

    /// No free loopback port could be bound after several attempts.
    #[error(
        "no free port for {process} after {attempts} attempts (another process took each one \
         between our probe and Redis' bind): free some ports or run fewer tests at once"
    )]
    NoFreePort {
        /// `redis-server` or `redis-sentinel`.
        process: &'static str,
        /// How many ports were tried.
        attempts: usize,
    },

    /// A Redis command the harness sent failed.
    #[error("{what} on {addr} failed: {source}")]
    Redis {
        /// The command or step, e.g. "ACL SETUSER issuer".
        what: String,
        /// The node or Sentinel the command went to.
        addr: String,
        /// The error the `redis` crate returned.
        #[source]
        source: ::redis::RedisError,
    },

    /// The cluster did not reach the expected state in time.
    #[error("timed out after {waited:?} waiting until {what}; logs:\n{log_tail}")]
    Timeout {
        /// The condition that never became true, with the last state seen.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// The last lines of the logs of the processes concerned.
        log_tail: String,
    },

    /// An address that is no process of this cluster.
    #[error(
        "no process of this cluster listens on {addr}: use an address from node_addrs(), \
         sentinel_addrs() or master_addr()"
    )]
    UnknownAddr {
        /// The address given.
        addr: String,
    },

    /// An operation that needs a stopped process got a running one, or the
    /// other way round.
    #[error("{process} is {state}: {hint}")]
    WrongState {
        /// The process, as `redis-server 127.0.0.1:port`.
        process: String,
        /// "running", "not running" or "paused".
        state: &'static str,
        /// What to call first.
        hint: &'static str,
    },

    /// Options the harness cannot run with.
    #[error("invalid RedisClusterOptions: {0}")]
    InvalidOptions(String),

    /// The operating system's random source failed.
    #[error("could not generate a random password: {0}")]
    Random(getrandom::Error),
}
