//! A standalone issuer on a loopback port, loaded from manifests written to a
//! temp dir, driven over real HTTPS: its certificate comes from a test CA
//! that the harness's clients trust, and nothing else.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod login_app;
pub mod redis;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use reqwest::StatusCode;
use serde_json::Value;
use tokenplane_sidecar::issuer::{Issuer, Settings};
use tokenplane_sidecar::keys::KeySet;
use tokenplane_sidecar::store::{MemoryStore, Store};
use tokenplane_sidecar::tls::{PairFiles, ServingTls};
use tokenplane_sidecar::{manifests, server};
use tokenplane_testkit::pki::{TestCa, Usage};
use tokio::sync::oneshot;

pub const SVC_SECRET: &str = "svc-secret-0123456789abcdefghijklmnopqrstuv";
pub const POSTER_SECRET: &str = "poster-secret-0123456789abcdefghijklmnopqrs";
pub const OFF_SECRET: &str = "off-secret-0123456789abcdefghijklmnopqrstuvw";
pub const MULTI_SECRET: &str = "multi-secret-0123456789abcdefghijklmnopqrst";
pub const WEB_SECRET: &str = "web-secret-0123456789abcdefghijklmnopqrstuvw";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdefghijklmnopqrstu";
pub const WEB_CALLBACK: &str = "https://web.test/cb";

/// A policy and five clients covering every registration shape.
pub fn manifests() -> String {
    let secret = |name: &str, id: &str, secret: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-oauth2-credentials, namespace: team}}\n\
             stringData: {{client_id: {id}, client_secret: {secret}}}\n"
        )
    };
    let client = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: team}}\n\
             spec:\n  policyRef: {{name: main}}\n{spec}"
        )
    };
    [
        "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: main, namespace: team}\n\
         spec:\n  lifetimes: {accessToken: 5m}\n"
            .to_owned(),
        client("svc", "  scopes: [read, write]\n  defaultScopes: [read]\n  audiences: [https://api.test]\n"),
        secret("svc", "svc.team", SVC_SECRET),
        client(
            "poster",
            "  tokenEndpointAuthMethod: client_secret_post\n  scopes: [read]\n  audiences: [https://api.test]\n",
        ),
        secret("poster", "poster.team", POSTER_SECRET),
        client("multi", "  audiences: [https://a.test, https://b.test]\n"),
        secret("multi", "multi.team", MULTI_SECRET),
        client(
            "spa",
            "  tokenEndpointAuthMethod: none\n  grantTypes: [authorization_code]\n  \
             redirectUris: [https://spa.test/cb]\n  audiences: [https://api.test]\n",
        ),
        client("off", "  disabled: true\n  audiences: [https://api.test]\n"),
        secret("off", "off.team", OFF_SECRET),
        client(
            "web",
            "  grantTypes: [authorization_code, refresh_token]\n  \
             redirectUris: [https://web.test/cb, http://127.0.0.1/cb]\n  \
             scopes: [read, write, admin]\n  audiences: [https://api.test]\n",
        ),
        secret("web", "web.team", WEB_SECRET),
        client(
            "app",
            "  tokenEndpointAuthMethod: none\n  firstParty: true\n  \
             grantTypes: [authorization_code, refresh_token]\n  \
             redirectUris: [http://127.0.0.1/cb]\n  scopes: [read]\n  audiences: [https://api.test]\n",
        ),
    ]
    .concat()
}

/// The test CA, and its certificate in a file (for `--issuer-ca-file`).
pub struct Pki {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::new("tokenplane test CA");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { ca, ca_file, _dir: dir }
    })
}

/// A client that trusts the test CA only.
pub fn https_client() -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(pki().ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca)
}

/// Where a harness issuer on `listener` is reached.
pub fn base_url(listener: &tokio::net::TcpListener) -> String {
    format!("https://{}", listener.local_addr().unwrap())
}

/// A loopback serving pair from the test CA, written into `dir`.
pub fn serving_tls(dir: &Path) -> Arc<ServingTls> {
    let files = pki().ca.loopback(Usage::Server).write(dir, "tls").unwrap();
    Arc::new(ServingTls::load(PairFiles { cert: files.cert, key: files.key }).unwrap())
}

pub struct TestIssuer {
    pub base: String,
    pub http: reqwest::Client,
    /// What the issuer serves HTTPS with; its files are in `dir`.
    pub tls: Arc<ServingTls>,
    /// The login app the policy sends people to.
    pub login: login_app::LoginApp,
    stop: Option<oneshot::Sender<()>>,
    pub dir: tempfile::TempDir,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts an issuer serving `yaml` (written to a file in a fresh temp dir)
/// from memory.
pub async fn start_with(yaml: &str) -> TestIssuer {
    start_on(MemoryStore::default(), yaml).await
}

/// Starts an issuer serving `yaml` from `store`.
pub async fn start_on<S: Store>(store: S, yaml: &str) -> TestIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_at(store, yaml, listener, None).await
}

/// An issuer on `listener`, signing with `keys` (else those of the
/// manifests, else a fresh key).
pub async fn start_at<S: Store>(
    store: S,
    yaml: &str,
    listener: tokio::net::TcpListener,
    keys: Option<KeySet>,
) -> TestIssuer {
    start_serving(store, yaml, listener, keys, None).await
}

/// An issuer of the default manifests serving HTTPS with `tls`.
pub async fn start_with_tls(tls: Arc<ServingTls>) -> TestIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_serving(MemoryStore::default(), &manifests(), listener, None, Some(tls)).await
}

async fn start_serving<S: Store>(
    store: S,
    yaml: &str,
    listener: tokio::net::TcpListener,
    keys: Option<KeySet>,
    tls: Option<Arc<ServingTls>>,
) -> TestIssuer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifests.yaml"), yaml).unwrap();
    let loaded = manifests::resolve(manifests::load_dir(dir.path()).unwrap(), None).unwrap();
    let base = base_url(&listener);
    let keys = match keys.or(loaded.keys) {
        Some(keys) => keys,
        None => KeySet::generate(loaded.policy.object.spec.signing.algorithm).unwrap(),
    };
    let login_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login = login_app::LoginApp::serve(login_listener, base.clone(), ADMIN_TOKEN);
    let mut settings = Settings::from_policy(base.clone(), &loaded.policy.object.spec);
    settings.login_url = Some(format!("{}/login", login.url));
    settings.consent_url = Some(format!("{}/consent", login.url));
    settings.admin_token_hash = Some(tokenplane_sidecar::opaque::hash(ADMIN_TOKEN));
    for client in loaded.clients {
        store.put_client(client).await.unwrap();
    }
    let tls = tls.unwrap_or_else(|| serving_tls(dir.path()));
    let issuer = Arc::new(Issuer::new(store, keys, settings).with_tls_metrics(tls.metrics()));
    serve_test_issuer(issuer, listener, login, dir, tls)
}

/// An issuer in managed mode on `store`: policy `policy_id` from Redis,
/// keys from `keys_dir`, both re-read every `reload`.
pub async fn start_managed(
    store: tokenplane_sidecar::store::RedisStore,
    policy_id: &str,
    keys_dir: &std::path::Path,
    listener: tokio::net::TcpListener,
    reload: std::time::Duration,
) -> TestIssuer {
    use tokenplane_sidecar::issuer::managed;
    let base = base_url(&listener);
    let source =
        managed::Source { policy_id: policy_id.into(), keys_dir: keys_dir.into(), admin_token_hash: None };
    let (record, settings) = source.settings(&store).await.unwrap();
    let origin = source.origin(&store).await.unwrap();
    let keys = source.keys(&origin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = serving_tls(dir.path());
    let issuer = Arc::new(Issuer::new(store, keys, settings).with_tls_metrics(tls.metrics()));
    tokio::spawn(managed::follow(issuer.clone(), source, (record, origin), reload));
    let login_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login = login_app::LoginApp::serve(login_listener, base, ADMIN_TOKEN);
    serve_test_issuer(issuer, listener, login, dir, tls)
}

fn serve_test_issuer<S: Store>(
    issuer: Arc<Issuer<S>>,
    listener: tokio::net::TcpListener,
    login: login_app::LoginApp,
    dir: tempfile::TempDir,
    tls: Arc<ServingTls>,
) -> TestIssuer {
    let base = base_url(&listener);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(server::Listener::https(listener, &tls), issuer, async move {
        let _ = stopped.await;
    }));
    let http = https_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestIssuer { base, http, tls, login, stop: Some(stop), dir }
}

pub async fn start() -> TestIssuer {
    start_with(&manifests()).await
}

/// How a request authenticates.
pub enum Auth<'a> {
    Basic(&'a str, &'a str),
    None,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl TestIssuer {
    pub async fn post(&self, path: &str, auth: Auth<'_>, form: &[(&str, &str)]) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Auth::Basic(id, secret) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Reply { status, headers, json }
    }

    /// A client_credentials token for the `svc` client.
    pub async fn svc_token(&self, extra: &[(&str, &str)]) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let r = self.post("/oauth2/token", Auth::Basic("svc.team", SVC_SECRET), &form).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        r.json["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn introspect(&self, token: &str) -> Value {
        let r =
            self.post("/oauth2/introspect", Auth::Basic("svc.team", SVC_SECRET), &[("token", token)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        r.json
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    /// A browser: follows redirects from `url` through the issuer and the
    /// login app, and stops at the first one that leaves both, returning
    /// that URL (the client's callback). Panics on any other answer.
    pub async fn browse(&self, url: &str) -> url::Url {
        let mut url = url.to_owned();
        for _ in 0..10 {
            let resp = self.http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::FOUND, "{url}: {}", resp.text().await.unwrap());
            url = resp.headers()["location"].to_str().unwrap().to_owned();
            if !url.starts_with(&self.base) && !url.starts_with(&self.login.url) {
                return url::Url::parse(&url).unwrap();
            }
        }
        panic!("redirect loop");
    }
}
