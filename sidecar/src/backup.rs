//! `tokenplane-sidecar backup`: an RDB snapshot of the master, taken over
//! the replication protocol as the RedisSentinelCluster's `backup` user
//! (`SYNC`; the user may read no key by command), written to a directory
//! with the newest `retain` snapshots kept. No crate speaks this part of
//! the protocol, so it is here: `AUTH`, `REPLCONF rdb-only 1` (the master
//! then sends the snapshot and nothing after it), `SYNC`, and the bulk
//! reply of the RDB, sized (`$<len>`) or, from a diskless master,
//! delimited (`$EOF:<40 bytes>`). With the cluster's TLS, over TLS,
//! the master verified against the cluster's CA by its stable name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokenplane_api::redis_tls::RedisTls;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot reach the master at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the master at {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{path}: {source}; the backup directory must be a writable volume")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no snapshot within {0:?}: raise --timeout for a large data set")]
    Timeout(Duration),
    #[error("the TLS settings cannot be used: {0}")]
    Tls(String),
}

/// The snapshot written, and the older ones removed to keep `retain`.
#[derive(Debug)]
pub struct Backup {
    pub file: PathBuf,
    pub bytes: u64,
    pub removed: Vec<PathBuf>,
}

/// Where the master is and how to reach it: `host:port`, and TLS.
pub struct Master<'a> {
    pub addr: &'a str,
    pub tls: Option<&'a RedisTls>,
}

/// Takes a snapshot of `master` into `dir` as `dump-<unix time>.rdb`
/// (written to a temporary name first, then renamed), and keeps the
/// newest `retain` snapshots there.
pub async fn snapshot(
    master: Master<'_>,
    login: (&str, &str),
    dir: &Path,
    retain: usize,
    now: u64,
    timeout: Duration,
) -> Result<Backup, BackupError> {
    let rdb = tokio::time::timeout(timeout, fetch(&master, login))
        .await
        .map_err(|_| BackupError::Timeout(timeout))??;
    let file = dir.join(format!("dump-{now}.rdb"));
    write_atomically(&file, &rdb)?;
    let removed = prune(dir, retain.max(1))?;
    Ok(Backup { file, bytes: rdb.len() as u64, removed })
}

/// A command in RESP.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn fetch(master: &Master<'_>, login: (&str, &str)) -> Result<Vec<u8>, BackupError> {
    let addr = master.addr;
    let connect = |source| BackupError::Connect { addr: addr.into(), source };
    let stream = TcpStream::connect(addr).await.map_err(connect)?;
    let Some(tls) = master.tls else { return read_snapshot(addr, BufReader::new(stream), login).await };
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| BackupError::Tls(format!("{host}: {e}")))?;
    let stream = connector(tls)?.connect(name, stream).await.map_err(connect)?;
    read_snapshot(addr, BufReader::new(stream), login).await
}

/// A client that trusts the CA bundle given and, if given, presents the
/// client certificate.
fn connector(tls: &RedisTls) -> Result<TlsConnector, BackupError> {
    let failed = |e: &dyn std::fmt::Display| BackupError::Tls(e.to_string());
    let bundle = tls.ca_bundle.as_deref().ok_or_else(|| {
        BackupError::Tls("give --redis-ca-file, the CA the cluster's certificate is signed by".into())
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        roots.add(cert.map_err(|e| failed(&e))?).map_err(|e| failed(&e))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(&client.cert_chain).collect::<Result<Vec<_>, _>>();
            let key = PrivateKeyDer::from_pem_slice(&client.key).map_err(|e| failed(&e))?;
            builder.with_client_auth_cert(chain.map_err(|e| failed(&e))?, key).map_err(|e| failed(&e))?
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn read_snapshot<S: AsyncRead + AsyncWrite + Unpin>(
    addr: &str,
    mut conn: BufReader<S>,
    (username, password): (&str, &str),
) -> Result<Vec<u8>, BackupError> {
    let protocol = |message: String| BackupError::Protocol { addr: addr.to_owned(), message };
    let io = |e: std::io::Error| protocol(e.to_string());
    let mut send = command(&[b"AUTH", username.as_bytes(), password.as_bytes()]);
    send.extend(command(&[b"REPLCONF", b"rdb-only", b"1"]));
    conn.get_mut().write_all(&send).await.map_err(io)?;
    let mut line = String::new();
    for expected in ["AUTH", "REPLCONF"] {
        line.clear();
        conn.read_line(&mut line).await.map_err(io)?;
        match (expected, line.trim_end()) {
            (_, "+OK") => {}
            // An older master without rdb-only streams commands after the
            // snapshot; the connection is closed once it is read.
            ("REPLCONF", reply) if reply.starts_with('-') => {}
            (_, reply) => return Err(protocol(format!("{expected} answered {reply:?}"))),
        }
    }
    // Only once those replies are read: Redis refuses SYNC with output pending.
    conn.get_mut().write_all(&command(&[b"SYNC"])).await.map_err(io)?;
    // Newlines keep the link alive while the master prepares the snapshot.
    loop {
        line.clear();
        if conn.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(protocol("closed the connection before the snapshot".into()));
        }
        if line != "\n" {
            break;
        }
    }
    let header = line.trim_end();
    let rdb = if let Some(mark) = header.strip_prefix("$EOF:") {
        read_until_mark(&mut conn, mark.as_bytes()).await.map_err(io)?
    } else if let Some(len) = header.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
        let mut rdb = vec![0; len];
        conn.read_exact(&mut rdb).await.map_err(io)?;
        rdb
    } else {
        return Err(protocol(format!("SYNC answered {header:?}")));
    };
    if !rdb.starts_with(b"REDIS") {
        return Err(protocol("the snapshot is not an RDB file".into()));
    }
    Ok(rdb)
}

/// A diskless master's snapshot: everything up to the 40-byte end mark.
async fn read_until_mark<R: AsyncRead + Unpin>(conn: &mut R, mark: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while !data.ends_with(mark) {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the snapshot ended early"));
        }
        data.extend_from_slice(&chunk[..n]);
    }
    data.truncate(data.len() - mark.len());
    Ok(data)
}

/// The job does nothing else meanwhile: plain blocking file calls.
fn write_atomically(file: &Path, data: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let failed = |source| BackupError::Write { path: file.to_owned(), source };
    let tmp = file.with_extension("rdb.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(failed)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(failed)?;
    std::fs::rename(&tmp, file).map_err(failed)
}

/// Removes all but the newest `retain` snapshots (by the time in their names).
fn prune(dir: &Path, retain: usize) -> Result<Vec<PathBuf>, BackupError> {
    let failed = |source| BackupError::Write { path: dir.to_owned(), source };
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let taken = name
            .strip_prefix("dump-")
            .and_then(|n| n.strip_suffix(".rdb"))
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(taken) = taken {
            snapshots.push((taken, entry.path()));
        }
    }
    snapshots.sort();
    let old = snapshots.len().saturating_sub(retain);
    let mut removed = Vec::new();
    for (_, path) in snapshots.into_iter().take(old) {
        std::fs::remove_file(&path).map_err(failed)?;
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(command(&[b"AUTH", b"u", b"p w"]), b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$3\r\np w\r\n");
    }

    #[test]
    fn only_the_newest_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for t in [30, 10, 20] {
            std::fs::write(dir.path().join(format!("dump-{t}.rdb")), b"REDIS").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        let removed = prune(dir.path(), 2).unwrap();
        assert_eq!(removed, [dir.path().join("dump-10.rdb")]);
        assert!(dir.path().join("dump-30.rdb").exists() && dir.path().join("notes.txt").exists());
    }
}
