//! Finding the master through the Sentinels, and following their failover
//! announcements.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ClientTlsConfig, ConnectionAddr, ErrorKind, ProtocolVersion, RedisError, TlsCertificates};
use tokenplane_api::redis_tls::RedisTls;
use tokenplane_api::storage;

use super::link::Links;
use super::{RedisConfig, unavailable};
use crate::store::{Result, StoreError};

fn addr(spec: &str, tls: bool) -> std::result::Result<ConnectionAddr, StoreError> {
    let (host, port) = spec
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| StoreError(format!("Sentinel address {spec:?} is not host:port")))?;
    Ok(if tls {
        ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

/// What the redis crate verifies the servers with and presents to them.
pub(crate) fn certificates(tls: &RedisTls) -> TlsCertificates {
    let client = tls.client.clone();
    let client_tls = client.map(|c| ClientTlsConfig { client_cert: c.cert_chain, client_key: c.key });
    TlsCertificates { client_tls, root_cert: tls.ca_bundle.clone() }
}

/// A client that finds the master through the Sentinels and talks RESP3
/// to it (for the tracking cache and pushed pub/sub messages), with the
/// credentials (as their files hold them now) and TLS of `config`.
pub(crate) fn sentinel_client(config: &RedisConfig) -> Result<SentinelClient> {
    let sentinels =
        config.sentinels.iter().map(|s| addr(s, config.tls.is_some())).collect::<Result<Vec<_>>>()?;
    let mut builder = SentinelClientBuilder::new(sentinels, &config.master_name, SentinelServerType::Master)
        .map_err(unavailable)?
        .set_client_to_redis_db(storage::AUTH_DB)
        .set_client_to_redis_protocol(ProtocolVersion::RESP3);
    if let Some(u) = &config.username {
        builder = builder.set_client_to_redis_username(u);
    }
    if let Some(p) = &config.password {
        builder = builder.set_client_to_redis_password(p.read()?);
    }
    if let Some(u) = &config.sentinel_username {
        builder = builder.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &config.sentinel_password {
        builder = builder.set_client_to_sentinel_password(p.read()?);
    }
    if let Some(tls) = &config.tls {
        crate::tls::install_default_provider();
        // The crate keeps the two sides apart: without certificates for the
        // data nodes it would verify them against the system's roots only.
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_certificates(certificates(tls))
            .set_client_to_sentinel_certificates(certificates(tls));
    }
    builder.build().map_err(unavailable)
}

/// Follows the Sentinels' `+switch-master` announcements and drops the
/// connections as soon as the master moves, rather than at the next error
/// (an old master cut off from the others would otherwise keep taking
/// writes). Moves to the next Sentinel when one goes away; ends with the store.
pub(super) async fn follow_failovers(config: RedisConfig, links: Weak<Links>) {
    for sentinel in config.sentinels.iter().cycle() {
        if links.strong_count() == 0 {
            return;
        }
        if let Err(e) = watch_sentinel(&config, sentinel, &links).await {
            tracing::debug!(sentinel, error = %e, "no failover announcements from this Sentinel; trying the next");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_sentinel(config: &RedisConfig, sentinel: &str, links: &Weak<Links>) -> redis::RedisResult<()> {
    let mut auth = redis::RedisConnectionInfo::default();
    if let Some(u) = &config.sentinel_username {
        auth = auth.set_username(u);
    }
    if let Some(p) = &config.sentinel_password {
        auth = auth.set_password(
            p.read().map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "no password", e.0)))?,
        );
    }
    let addr = addr(sentinel, config.tls.is_some())
        .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "bad address", e.0)))?;
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(auth);
    let client = match &config.tls {
        Some(tls) => redis::Client::build_with_tls(info, certificates(tls))?,
        None => redis::Client::open(info)?,
    };
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    let mut events = pubsub.on_message();
    while let Some(event) = events.next().await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload: String = event.get_payload()?;
        if payload.split(' ').next() != Some(config.master_name.as_str()) {
            continue;
        }
        let Some(links) = links.upgrade() else { return Ok(()) };
        tracing::info!(%payload, "the Sentinels announced a new Redis master");
        links.drop_all().await;
    }
    Ok(())
}
