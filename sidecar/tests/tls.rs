//! HTTPS at the edge: what the harness's issuer serves (every other test
//! file's flows run over it too), certificate reloads under load, and the
//! clear errors of everything that is not a good TLS client or pair.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use support::{SVC_SECRET, TestIssuer, pki, start};
use tokenplane_sidecar::tls::{PairFiles, ServingTls};
use tokenplane_testkit::pki::{TestCa, Usage, window};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A raw TLS connection to the issuer offering `alpn`: the protocol it
/// chose and the leaf certificate it presented.
async fn handshake(issuer: &TestIssuer, alpn: &[&[u8]]) -> (Option<Vec<u8>>, CertificateDer<'static>) {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki().ca.pem().as_bytes()).unwrap()).unwrap();
    let mut config = ClientConfig::builder_with_provider(tokenplane_sidecar::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(issuer.base.trim_start_matches("https://")).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    (session.alpn_protocol().map(<[u8]>::to_vec), session.peer_certificates().unwrap()[0].clone())
}

async fn metric(issuer: &TestIssuer, name: &str) -> String {
    let text = issuer.get("/metrics").await.text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn https_negotiates_h2_or_http1_and_the_metadata_advertises_https() {
    let issuer = start().await;
    assert_eq!(handshake(&issuer, &[b"h2", b"http/1.1"]).await.0.as_deref(), Some(&b"h2"[..]));
    assert_eq!(handshake(&issuer, &[b"http/1.1"]).await.0.as_deref(), Some(&b"http/1.1"[..]));

    let h2 = support::https_client().build().unwrap();
    let resp = h2
        .post(format!("{}/oauth2/token", issuer.base))
        .basic_auth("svc.team", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);

    let metadata: serde_json::Value =
        issuer.get("/.well-known/oauth-authorization-server").await.json().await.unwrap();
    for endpoint in ["token_endpoint", "introspection_endpoint", "revocation_endpoint", "jwks_uri"] {
        assert!(metadata[endpoint].as_str().unwrap().starts_with("https://"), "{endpoint}: {metadata}");
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_readable_400_and_the_server_keeps_serving() {
    let issuer = start().await;
    let mut tcp = tokio::net::TcpStream::connect(issuer.base.trim_start_matches("https://")).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("this port serves HTTPS"), "{reply}");
    assert_eq!(issuer.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(
        metric(&issuer, "tokenplane_issuer_tls_handshake_failures_total").await,
        "tokenplane_issuer_tls_handshake_failures_total 1"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_and_counted() {
    let issuer = start().await;
    let stranger = TestCa::new("some other CA");
    let roots = reqwest::Certificate::from_pem(stranger.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(roots)
        .build()
        .unwrap();
    let error = client.get(format!("{}/healthz", issuer.base)).send().await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(issuer.get("/healthz").await.status(), StatusCode::OK);
    let failures = metric(&issuer, "tokenplane_issuer_tls_handshake_failures_total").await;
    assert_eq!(failures, "tokenplane_issuer_tls_handshake_failures_total 1");
}

/// Swaps the pair the way the kubelet updates a mounted Secret: a new
/// folder, then one rename of the `..data` symlink the files point through.
fn swap(mount: &Path, generation: u32, cert: &str, key: &str) {
    let folder = mount.join(format!("..{generation}"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("tls.crt"), cert).unwrap();
    std::fs::write(folder.join("tls.key"), key).unwrap();
    let next = mount.join("..data_tmp");
    std::os::unix::fs::symlink(folder.file_name().unwrap(), &next).unwrap();
    std::fs::rename(&next, mount.join("..data")).unwrap();
}

fn mounted(mount: &Path, cert: &str, key: &str) -> PairFiles {
    swap(mount, 0, cert, key);
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), mount.join(file)).unwrap();
    }
    PairFiles { cert: mount.join("tls.crt"), key: mount.join("tls.key") }
}

#[tokio::test]
async fn a_certificate_swap_during_a_stream_of_new_connections_loses_no_request() {
    let first = pki().ca.loopback(Usage::Server);
    let mount = tempfile::tempdir().unwrap();
    let tls = Arc::new(ServingTls::load(mounted(mount.path(), &first.cert_pem, &first.key_pem)).unwrap());
    let issuer = support::start_with_tls(tls.clone()).await;
    let before = handshake(&issuer, &[b"http/1.1"]).await.1;

    // A new connection, and so a handshake, for every request.
    let http = support::https_client().pool_max_idle_per_host(0).build().unwrap();
    let url = format!("{}/oauth2/token", issuer.base);
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..300 {
            let resp = http
                .post(&url)
                .basic_auth("svc.team", Some(SVC_SECRET))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await;
            statuses.push(resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let wrong_key = pki().ca.loopback(Usage::Server).key_pem;
    swap(mount.path(), 1, &first.cert_pem, &wrong_key);
    tls.reload();
    let second = pki().ca.loopback(Usage::Server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    swap(mount.path(), 2, &second.cert_pem, &second.key_pem);
    tls.reload();

    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| s == &Ok(200)), "{:?}", statuses.iter().find(|s| s != &&Ok(200)));
    let after = handshake(&issuer, &[b"http/1.1"]).await.1;
    assert_ne!(before, after, "the new certificate is served");
    assert_eq!(after.as_ref(), CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap().as_ref());
    let reloads = metric(&issuer, "tokenplane_issuer_tls_certificate_reloads_total").await;
    assert!(
        reloads.contains(r#"{result="failure"} 1"#) && reloads.contains(r#"{result="success"} 1"#),
        "{reloads}"
    );
}

#[test]
fn a_bad_pair_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki().ca.loopback(Usage::Server);
    let expired = pki().ca.leaf_valid(
        &["localhost"],
        Usage::Server,
        (
            window(Duration::from_secs(7200), Duration::ZERO).0,
            window(Duration::from_secs(3600), Duration::ZERO).0,
        ),
    );
    let other_key = pki().ca.loopback(Usage::Server).key_pem;
    let cases = [
        ("expired", expired.cert_pem.as_str(), expired.key_pem.as_str(), "expired at unix time"),
        ("mismatched", good.cert_pem.as_str(), other_key.as_str(), "does not belong to the certificate"),
        ("no certificate", "", good.key_pem.as_str(), "holds no PEM certificate"),
        ("no key", good.cert_pem.as_str(), "not a key", "holds no PEM private key"),
    ];
    for (case, cert, key, expected) in cases {
        let files = PairFiles {
            cert: dir.path().join(format!("{case}.crt")),
            key: dir.path().join(format!("{case}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let error = ServingTls::load(files).err().unwrap_or_else(|| panic!("{case}: loaded")).to_string();
        assert!(error.contains(expected), "{case}: {error}");
    }
    let missing = PairFiles { cert: dir.path().join("absent.crt"), key: dir.path().join("absent.key") };
    let error = ServingTls::load(missing).err().unwrap().to_string();
    assert!(error.contains("cannot read") && error.contains("absent.crt"), "{error}");
}
