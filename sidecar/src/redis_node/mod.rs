//! `tokenplane-sidecar redis-node`: the steps a RedisSentinelCluster's pods
//! run around Redis and Sentinel, as tested processes rather than shell in
//! a ConfigMap.
//!
//! `start` runs before a data node or a Sentinel serves. It asks the
//! Sentinels who the master is, so a node that was master before a restart
//! comes back as a replica of the one that replaced it, and writes the
//! final configuration: the operator's template (no secrets), the pod's
//! stable name to announce, where to replicate from, and the users, from
//! the role passwords (or only their hashes) mounted from Secrets. It also
//! copies this binary where the Redis container can run `hand-over`.
//!
//! `hand-over` is the data node's preStop step: a master that is going away
//! asks the Sentinels for a failover and waits for it.

mod config;
mod discover;
mod handover;
mod start;

pub use config::{Users, UsersError};
pub use discover::Reach;
pub use handover::{HandOver, HandOverError, HandedOver};
pub use start::{Kind, Place, Start, StartError};

use std::fmt;

/// A host and port, as Sentinels report and Redis announces them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    /// `host:port`; the host may be a DNS name or an IP (IPv6 in brackets).
    pub fn parse(text: &str) -> Option<Self> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok()?;
        is_host(host).then(|| Self { host: host.to_owned(), port })
    }

    /// The same node, whatever the case of its name.
    fn same(&self, other: &Addr) -> bool {
        self.port == other.port && self.host.eq_ignore_ascii_case(&other.host)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// A name or address that can go into a configuration line as it is.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_refuse_what_could_inject_a_directive() {
        let a = Addr::parse("redis-0.redis.prod.svc.cluster.local:6379").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("redis-0.redis.prod.svc.cluster.local", 6379));
        assert_eq!(Addr::parse("[::1]:26379").unwrap().to_string(), "[::1]:26379");
        assert!(a.same(&Addr::parse("REDIS-0.redis.prod.svc.cluster.local:6379").unwrap()));
        for bad in ["redis-0", "h:port", "h x:1", "h\nreplicaof evil 1:1", ":6379", "h:70000"] {
            assert!(Addr::parse(bad).is_none(), "{bad:?}");
        }
    }
}
