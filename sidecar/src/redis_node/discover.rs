//! What the running cluster says: the master each Sentinel names, and the
//! role each data node reports. Every question has a short timeout; a peer
//! that does not answer is left out, never waited for.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value,
};
use tokenplane_api::redis_tls::RedisTls;

use super::Addr;

/// How every question travels: its timeout, and with the cluster's TLS
/// the CA its members' certificate is verified against.
#[derive(Clone, Debug)]
pub struct Reach {
    pub timeout: Duration,
    pub tls: Option<RedisTls>,
}

/// How to log in: a role's user, on nodes and Sentinels alike.
pub struct Login<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub reach: &'a Reach,
}

pub(super) async fn connect(addr: &Addr, login: &Login<'_>) -> redis::RedisResult<MultiplexedConnection> {
    let (host, port) = (addr.host.clone(), addr.port);
    let to = match login.reach.tls {
        Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        None => ConnectionAddr::Tcp(host, port),
    };
    let info: ConnectionInfo = to.into_connection_info()?.set_redis_settings(
        RedisConnectionInfo::default().set_username(login.username).set_password(login.password),
    );
    let client = match &login.reach.tls {
        Some(tls) => {
            crate::tls::install_default_provider();
            redis::Client::build_with_tls(info, crate::store::certificates(tls))?
        }
        None => redis::Client::open(info)?,
    };
    let timeout = Some(login.reach.timeout);
    let config = AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Every address the entries (`host:port`) resolve to: a headless Service
/// names all its pods. With TLS the names stay, for the certificate is
/// checked against them (the pods then list each Sentinel by name).
pub(super) async fn resolve(entries: &[Addr], login: &Login<'_>) -> Vec<Addr> {
    if login.reach.tls.is_some() {
        return entries.to_vec();
    }
    let mut all = Vec::new();
    for entry in entries {
        match tokio::net::lookup_host((entry.host.as_str(), entry.port)).await {
            Ok(found) => all.extend(found.map(|a| Addr { host: a.ip().to_string(), port: a.port() })),
            Err(e) => tracing::debug!(addr = %entry, error = %e, "does not resolve (yet)"),
        }
    }
    all
}

/// The master each reachable Sentinel of `sentinels` names for `master_name`.
pub async fn sentinel_answers(sentinels: &[Addr], master_name: &str, login: &Login<'_>) -> Vec<Addr> {
    let mut answers = Vec::new();
    for addr in resolve(sentinels, login).await {
        let asked = async {
            let mut conn = connect(&addr, login).await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match asked.await {
            Ok(Some((host, port))) => answers.push(Addr { host, port }),
            Ok(None) => tracing::info!(sentinel = %addr, "the Sentinel knows no master of that name"),
            Err(e) => tracing::debug!(sentinel = %addr, error = %e, "no answer"),
        }
    }
    answers
}

/// The replicas a Sentinel knows of the master `master_name`, or `None` if
/// it does not answer.
pub async fn known_replicas(sentinel: &Addr, master_name: &str, login: &Login<'_>) -> Option<Vec<Addr>> {
    let asked = async {
        let mut conn = connect(sentinel, login).await?;
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(master_name)
            .query_async::<Vec<Vec<String>>>(&mut conn)
            .await
    };
    match asked.await {
        Ok(replicas) => Some(replicas.iter().filter_map(|fields| field_addr(fields)).collect()),
        Err(e) => {
            tracing::debug!(sentinel = %sentinel, error = %e, "no answer to SENTINEL REPLICAS");
            None
        }
    }
}

/// `ip` and `port` of a flat `[name, value, ...]` list.
fn field_addr(fields: &[String]) -> Option<Addr> {
    let get = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).and_then(|kv| kv.get(1));
    Some(Addr { host: get("ip")?.clone(), port: get("port")?.parse().ok()? })
}

/// What a node says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A master at this replication offset, with the replicas attached to
    /// it (as they announce themselves) and how far each has acknowledged.
    Master {
        offset: i64,
        replicas: Vec<(Addr, i64)>,
    },
    ReplicaOf(Addr),
    /// Sentinel, or an answer we do not understand.
    Other,
}

/// `ROLE` of `node`, or `None` if it does not answer.
pub async fn role(node: &Addr, login: &Login<'_>) -> Option<Role> {
    let asked = async {
        let mut conn = connect(node, login).await?;
        redis::cmd("ROLE").query_async::<Value>(&mut conn).await
    };
    match asked.await {
        Ok(Value::Array(items)) => Some(role_of(&items)),
        Ok(_) => Some(Role::Other),
        Err(e) => {
            tracing::debug!(node = %node, error = %e, "no answer to ROLE");
            None
        }
    }
}

fn role_of(items: &[Value]) -> Role {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match (items.first().and_then(text).as_deref(), items.get(1), items.get(2)) {
        (Some("master"), Some(Value::Int(offset)), Some(Value::Array(replicas))) => {
            Role::Master { offset: *offset, replicas: replicas.iter().filter_map(replica).collect() }
        }
        (Some("master"), ..) => Role::Master { offset: 0, replicas: Vec::new() },
        (Some("slave"), Some(host), Some(Value::Int(port))) => match (text(host), u16::try_from(*port)) {
            (Some(host), Ok(port)) => Role::ReplicaOf(Addr { host, port }),
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

/// One `[ip, port, offset]` entry of a master's `ROLE`.
fn replica(entry: &Value) -> Option<(Addr, i64)> {
    let Value::Array(fields) = entry else { return None };
    let text = |i: usize| match fields.get(i) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    };
    let addr = Addr { host: text(0)?.to_owned(), port: text(1)?.parse().ok()? };
    Some((addr, text(2)?.parse().ok()?))
}

/// How much of the replication stream `node` holds (`master_repl_offset`
/// of `INFO replication`): above 0 once it ever took a write or synced,
/// and kept when its master goes away (`ROLE` then says -1).
pub async fn replication_offset(node: &Addr, login: &Login<'_>) -> Option<i64> {
    let asked = async {
        let mut conn = connect(node, login).await?;
        redis::cmd("INFO").arg("replication").query_async::<String>(&mut conn).await
    };
    match asked.await {
        Ok(info) => offset_in(&info),
        Err(e) => {
            tracing::debug!(node = %node, error = %e, "no answer to INFO");
            None
        }
    }
}

fn offset_in(info: &str) -> Option<i64> {
    info.lines().find_map(|l| l.strip_prefix("master_repl_offset:")).and_then(|v| v.trim().parse().ok())
}

/// The answer most Sentinels gave (the first of equals).
pub fn majority(answers: &[Addr]) -> Option<&Addr> {
    let count = |a: &Addr| answers.iter().filter(|b| a.same(b)).count();
    answers.iter().fold(None, |best: Option<&Addr>, a| match best {
        Some(b) if count(b) >= count(a) => Some(b),
        _ => Some(a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_named_master_wins() {
        let a = Addr::parse("a:1").unwrap();
        let b = Addr::parse("b:1").unwrap();
        assert_eq!(majority(&[a.clone(), b.clone(), b.clone()]), Some(&b));
        assert_eq!(majority(&[a.clone(), b.clone()]), Some(&a));
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn the_offset_is_read_from_info() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:down\r\nmaster_repl_offset:8812\r\n";
        assert_eq!(offset_in(info), Some(8812));
        assert_eq!(offset_in("role:master\r\n"), None);
    }

    #[test]
    fn role_replies_are_read() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let none = Role::Master { offset: 0, replicas: vec![] };
        assert_eq!(role_of(&[s("master"), Value::Int(0), Value::Array(vec![])]), none);
        let attached = Value::Array(vec![Value::Array(vec![s("r-1"), s("6379"), s("77")])]);
        let one = Role::Master { offset: 80, replicas: vec![(Addr::parse("r-1:6379").unwrap(), 77)] };
        assert_eq!(role_of(&[s("master"), Value::Int(80), attached]), one);
        assert_eq!(
            role_of(&[s("slave"), s("r-0"), Value::Int(6379), s("connected"), Value::Int(1)]),
            Role::ReplicaOf(Addr::parse("r-0:6379").unwrap())
        );
        assert_eq!(role_of(&[s("sentinel"), Value::Array(vec![])]), Role::Other);
    }
}
