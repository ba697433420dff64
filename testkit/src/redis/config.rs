//! The configuration files of the data nodes and the Sentinels, and the ACL
//! rules of the harness's users.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenplane_api::acl::{
    DEFAULT_OFF, REPLICATION, SENTINEL_CLIENT, SENTINEL_ON_NODE, SENTINEL_ON_SENTINEL,
};

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
        "user default {DEFAULT_OFF}\n\
         user {ADMIN_USER} on >{} {ADMIN_RULES}\n\
         user {REPLICATION_USER} on >{} {REPLICATION}\n\
         user {SENTINEL_USER} on >{} {SENTINEL_ON_NODE}\n",
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
         user default {DEFAULT_OFF}\n\
         user {ADMIN_USER} on >{} {ADMIN_RULES}\n\
         user {SENTINEL_USER} on >{} {SENTINEL_ON_SENTINEL}\n\
         user {SENTINEL_CLIENT_USER} on >{} {SENTINEL_CLIENT}\n\
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

#[cfg(test)]
mod tests {
    use super::*;

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
