//! The configuration files of the data nodes and the Sentinels, and the ACL
//! rules of the harness's users.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pki::LeafFiles;

/// The user of the harness and of tests that need everything.
pub(crate) const ADMIN_USER: &str = "admin";
/// The user replicas authenticate to their master with.
pub(crate) const REPLICATION_USER: &str = "replication";
/// The user Sentinels authenticate with, to data nodes and to each other.
pub(crate) const SENTINEL_USER: &str = "sentinel";
/// The user clients authenticate to the Sentinels with.
pub(crate) const SENTINEL_CLIENT_USER: &str = "sentinel-client";

/// Sentinels per cluster and the quorum that agrees a master is down.
pub(crate) const SENTINELS: usize = 3;
pub(crate) const QUORUM: usize = 2;

/// Nobody authenticates as `default`: a connection that does not `AUTH`
/// can run no command (`NOAUTH`), and `AUTH default ...` fails (`WRONGPASS`).
const DEFAULT_OFF: &str = "user default off resetkeys resetchannels -@all";

/// What a replica needs on its master (Redis docs, "ACL rules for Sentinel
/// and Replicas").
pub(crate) const REPLICATION_RULES: &str = "resetkeys resetchannels -@all +psync +replconf +ping";

/// What Sentinel 7.0 sends to data nodes: PING and INFO to monitor them,
/// CLIENT SETNAME on its links, SUBSCRIBE and PUBLISH on its hello channel,
/// and the failover transaction `MULTI; SLAVEOF; CONFIG REWRITE; CLIENT KILL;
/// EXEC`; SCRIPT KILL when a node answers BUSY. The hello channel must be
/// granted explicitly: Redis 7.0 denies all channels by default
/// (`acl-pubsub-default resetchannels`), and without it Sentinels silently
/// never discover each other.
pub(crate) const SENTINEL_ON_NODE_RULES: &str = "resetkeys resetchannels &__sentinel__:hello -@all \
     +ping +info +client|setname +client|kill +subscribe +publish +multi +exec +slaveof \
     +config|rewrite +script|kill";

/// What a Sentinel sends to its peers: PING, `SENTINEL is-master-down-by-addr`
/// (votes), PUBLISH of its hello message, CLIENT SETNAME.
const SENTINEL_ON_SENTINEL_RULES: &str = "resetkeys resetchannels &__sentinel__:hello -@all \
     +ping +publish +client|setname +sentinel|is-master-down-by-addr";

/// What a client of the Sentinels needs: discovery (what the `redis` crate's
/// sentinel client and others send) and the Sentinel event channels
/// (`+switch-master`, ...).
const SENTINEL_CLIENT_RULES: &str = "resetkeys resetchannels &* -@all +ping +hello +command \
     +role +client|setname +client|getname +client|id +sentinel|get-master-addr-by-name \
     +sentinel|master +sentinel|masters +sentinel|replicas +sentinel|slaves +sentinel|sentinels \
     +sentinel|myid +subscribe +psubscribe +unsubscribe +punsubscribe";

const ADMIN_RULES: &str = "~* &* +@all";

/// The passwords of one cluster, random per cluster.
pub(crate) struct Passwords {
    pub admin: String,
    pub replication: String,
    pub sentinel: String,
    pub sentinel_client: String,
}

/// Failover timings written into every Sentinel's configuration.
pub(crate) struct Timings {
    pub down_after: Duration,
    pub failover_timeout: Duration,
}

/// The ACL file of a data node.
pub(crate) fn node_acl_file(pw: &Passwords) -> String {
    format!(
        "{DEFAULT_OFF}\n\
         user {ADMIN_USER} on >{} {ADMIN_RULES}\n\
         user {REPLICATION_USER} on >{} {REPLICATION_RULES}\n\
         user {SENTINEL_USER} on >{} {SENTINEL_ON_NODE_RULES}\n",
        pw.admin, pw.replication, pw.sentinel
    )
}

/// The TLS files every process of a TLS cluster uses, and whether it
/// requires clients to present a certificate.
pub(crate) struct TlsFiles {
    pub ca: PathBuf,
    pub server: LeafFiles,
    /// What the process presents when it connects out (replication, Sentinel
    /// links): the server leaf is for serving only (its EKU is serverAuth).
    pub client: LeafFiles,
    /// `tls-auth-clients`: `yes` or `optional`.
    pub auth_clients: &'static str,
}

/// Where a process listens: the port, plain TCP or TLS.
pub(crate) struct Listen<'a> {
    pub port: u16,
    pub tls: Option<&'a TlsFiles>,
}

impl Listen<'_> {
    /// `port` for plain TCP, or `port 0` and `tls-port` with TLS on every
    /// link, replication and Sentinel links included (`tls-replication yes`).
    fn directives(&self) -> String {
        let Some(tls) = self.tls else { return format!("port {}\n", self.port) };
        format!(
            "port 0\n\
             tls-port {}\n\
             tls-cert-file {}\n\
             tls-key-file {}\n\
             tls-client-cert-file {}\n\
             tls-client-key-file {}\n\
             tls-ca-cert-file {}\n\
             tls-auth-clients {}\n\
             tls-replication yes\n",
            self.port,
            quote(&tls.server.cert),
            quote(&tls.server.key),
            quote(&tls.client.cert),
            quote(&tls.client.key),
            quote(&tls.ca),
            tls.auth_clients,
        )
    }
}

/// The configuration of a data node; `replica_of` is the master's port.
pub(crate) fn node_config(
    listen: &Listen<'_>,
    dir: &Path,
    log: &Path,
    acl_file: &Path,
    pw: &Passwords,
    replica_of: Option<u16>,
) -> String {
    let mut conf = format!(
        "# written by tokenplane-testkit; Sentinel rewrites it on failover\n\
         bind 127.0.0.1\n\
         {}\
         daemonize no\n\
         dir {}\n\
         logfile {}\n\
         always-show-logo no\n\
         save \"\"\n\
         appendonly no\n\
         repl-diskless-sync-delay 0\n\
         aclfile {}\n\
         masteruser {REPLICATION_USER}\n\
         masterauth {}\n",
        listen.directives(),
        quote(dir),
        quote(log),
        quote(acl_file),
        pw.replication,
    );
    if let Some(master) = replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {master}\n"));
    }
    conf
}

/// The configuration of a Sentinel monitoring the master on `master_port`.
pub(crate) fn sentinel_config(
    listen: &Listen<'_>,
    dir: &Path,
    log: &Path,
    master_name: &str,
    master_port: u16,
    pw: &Passwords,
    timings: &Timings,
) -> String {
    let name = master_name;
    format!(
        "# written by tokenplane-testkit; Sentinel rewrites it as it learns the cluster\n\
         bind 127.0.0.1\n\
         {}\
         daemonize no\n\
         dir {}\n\
         logfile {}\n\
         {DEFAULT_OFF}\n\
         user {ADMIN_USER} on >{} {ADMIN_RULES}\n\
         user {SENTINEL_USER} on >{} {SENTINEL_ON_SENTINEL_RULES}\n\
         user {SENTINEL_CLIENT_USER} on >{} {SENTINEL_CLIENT_RULES}\n\
         sentinel sentinel-user {SENTINEL_USER}\n\
         sentinel sentinel-pass {}\n\
         sentinel monitor {name} 127.0.0.1 {master_port} {QUORUM}\n\
         sentinel auth-user {name} {SENTINEL_USER}\n\
         sentinel auth-pass {name} {}\n\
         sentinel down-after-milliseconds {name} {}\n\
         sentinel failover-timeout {name} {}\n\
         sentinel parallel-syncs {name} 1\n",
        listen.directives(),
        quote(dir),
        quote(log),
        pw.admin,
        pw.sentinel,
        pw.sentinel_client,
        pw.sentinel,
        pw.sentinel,
        timings.down_after.as_millis(),
        timings.failover_timeout.as_millis(),
    )
}

/// A path as a double-quoted Redis configuration string.
fn quote(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits ACL rules on whitespace, keeping a selector `(...)` in one piece.
pub(crate) fn split_rules(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in rules.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_whitespace() && depth == 0 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_on_whitespace_but_not_inside_selectors() {
        assert_eq!(
            split_rules("  ~tp:* +get\t(+set ~w:*)  +ping "),
            ["~tp:*", "+get", "(+set ~w:*)", "+ping"]
        );
        assert!(split_rules(" ").is_empty());
    }

    #[test]
    fn a_tls_listener_turns_the_plain_port_off() {
        let leaf = |name: &str| LeafFiles {
            cert: format!("/t/{name}.crt").into(),
            key: format!("/t/{name}.key").into(),
        };
        let tls = TlsFiles {
            ca: "/t/ca.crt".into(),
            server: leaf("server"),
            client: leaf("client"),
            auth_clients: "yes",
        };
        assert_eq!(Listen { port: 7000, tls: None }.directives(), "port 7000\n");
        let conf = Listen { port: 7000, tls: Some(&tls) }.directives();
        for line in [
            "port 0",
            "tls-port 7000",
            "tls-auth-clients yes",
            "tls-replication yes",
            "tls-ca-cert-file \"/t/ca.crt\"",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} in {conf}");
        }
    }

    #[test]
    fn paths_are_quoted() {
        assert_eq!(quote(Path::new("/tmp/a \"b\"\\c")), r#""/tmp/a \"b\"\\c""#);
    }
}
