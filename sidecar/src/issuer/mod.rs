//! The authorization server: token, introspection, revocation, metadata and
//! JWKS endpoints over one store and one key set.

pub mod auth;
mod authorize;
pub mod form;
mod introspect;
mod login;
pub mod managed;
mod metadata;
pub mod metrics;
mod revoke;
mod token;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use hyper::body::Body;

use crate::keys::KeySet;
use crate::oauth_error::OAuthError;
use crate::reply::{BoxError, Reply, error_reply, json, only_get, openmetrics, read_body, text};
pub(crate) use crate::reply::{empty_no_store, json_reply, no_store};
use crate::store::{Store, StoreError};
use form::Form;
use metrics::Metrics;

/// How an issuer serves: from its TokenPolicy, replaced whole when the
/// policy changes. Lifetimes are in seconds.
#[derive(Clone)]
pub struct Settings {
    /// The `iss` of every token and the base of every endpoint URL.
    pub issuer: String,
    pub access_token_ttl: u64,
    /// Lifetime of each refresh token, renewed at every rotation.
    pub refresh_token_ttl: u64,
    /// Absolute lifetime of a refresh-token family, if any.
    pub refresh_family_ttl: Option<u64>,
    pub code_ttl: u64,
    /// The login app's page; without it the code flow is unavailable.
    pub login_url: Option<String>,
    /// The consent page; the login page when unset.
    pub consent_url: Option<String>,
    /// base64url SHA-256 of the admin API's bearer token; no admin API without it.
    pub admin_token_hash: Option<String>,
    /// Token endpoint limits per authenticated client and per source address.
    pub per_client: Option<Rate>,
    pub per_address: Option<Rate>,
    /// The policy id (`<name>.<namespace>`) served: registrations of other
    /// policies are unknown clients here. Any registration when unset
    /// (standalone, where only the policy's clients are loaded).
    pub policy: Option<String>,
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn from_spec(rate: &tokenplane_api::tokenpolicy::Rate) -> Self {
        Self {
            per_second: rate.requests_per_second.max(1).unsigned_abs(),
            burst: rate.burst.max(1).unsigned_abs(),
        }
    }
}

impl Settings {
    /// Settings from a TokenPolicy, for the issuer identifier `issuer`.
    pub fn from_policy(issuer: String, spec: &tokenplane_api::TokenPolicySpec) -> Self {
        let l = &spec.lifetimes;
        Self {
            issuer,
            access_token_ttl: l.access_token.as_secs(),
            refresh_token_ttl: l.refresh_token.as_secs(),
            refresh_family_ttl: l.refresh_token_family.map(|d| d.as_secs()),
            code_ttl: l.authorization_code.as_secs(),
            login_url: spec.login.as_ref().map(|l| l.login_url.clone()),
            consent_url: spec.login.as_ref().and_then(|l| l.consent_url.clone()),
            admin_token_hash: None,
            per_client: spec.rate_limits.as_ref().and_then(|r| r.per_client.as_ref()).map(Rate::from_spec),
            per_address: spec
                .rate_limits
                .as_ref()
                .and_then(|r| r.per_source_address.as_ref())
                .map(Rate::from_spec),
            policy: None,
        }
    }
}

pub struct Issuer<S> {
    store: S,
    live: ArcSwap<Live>,
    metrics: Metrics,
}

/// What a policy or key change replaces, as one value, so a request sees
/// one consistent version of it.
pub struct Live {
    pub keys: Arc<KeySet>,
    pub settings: Settings,
    metadata: Bytes,
}

impl Live {
    fn new(keys: Arc<KeySet>, settings: Settings) -> Self {
        Self { metadata: metadata::document(&settings.issuer), keys, settings }
    }
}

/// The form POST endpoints.
enum Post {
    Token,
    Introspect,
    Revoke,
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store unavailable");
        OAuthError::temporarily_unavailable("the token store is unavailable; retry shortly")
    }
}

impl<S: Store> crate::server::Handler for Issuer<S> {
    fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> impl Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send {
        Issuer::handle(self, req)
    }
}

impl<S> Issuer<S> {
    /// The keys and settings in force.
    pub fn current(&self) -> Guard<Arc<Live>> {
        self.live.load()
    }

    /// Signs with `keys` from the next request on.
    pub fn replace_keys(&self, keys: KeySet) {
        let settings = self.current().settings.clone();
        self.live.store(Arc::new(Live::new(Arc::new(keys), settings)));
    }

    /// Serves with `settings` from the next request on.
    pub fn replace_settings(&self, settings: Settings) {
        let keys = self.current().keys.clone();
        self.live.store(Arc::new(Live::new(keys, settings)));
    }
}

impl<S: Store> Issuer<S> {
    /// A registration this issuer serves: one of its policy's clients.
    pub(crate) async fn client(
        &self,
        client_id: &str,
    ) -> crate::store::Result<Option<Arc<tokenplane_api::client::ClientRecord>>> {
        let client = self.store.client(client_id).await?;
        let live = self.current();
        let wanted = live.settings.policy.as_ref();
        Ok(client.filter(|c| wanted.is_none() || c.policy.as_ref() == wanted))
    }

    pub fn new(store: S, keys: KeySet, settings: Settings) -> Self {
        let live = ArcSwap::from_pointee(Live::new(Arc::new(keys), settings));
        Self { store, live, metrics: Metrics::default() }
    }

    /// Adds the TLS listener's metrics to `/metrics`.
    pub fn with_tls_metrics(mut self, tls: &crate::tls::Metrics) -> Self {
        tls.register(self.metrics.registry_mut());
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counts one request against each limit that is set, in one store
    /// call; 429 naming the first one exceeded.
    async fn limit(&self, limits: [Option<(Rate, String, &'static str)>; 2]) -> Result<(), OAuthError> {
        let set: Vec<_> = limits.into_iter().flatten().collect();
        if set.is_empty() {
            return Ok(());
        }
        let subjects: Vec<(&str, Rate)> =
            set.iter().map(|(rate, subject, _)| (subject.as_str(), *rate)).collect();
        match self.store.rate_limit(&subjects).await? {
            None => Ok(()),
            Some((index, wait)) => Err(OAuthError::rate_limited(set[index].2, wait)),
        }
    }

    /// Serves one request. Never fails: every error becomes an RFC 6749 body.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (endpoint, result) = self.route(req).await;
        let reply = result.unwrap_or_else(|e| {
            self.metrics.error(endpoint, e.code);
            error_reply(&e)
        });
        self.metrics.request(endpoint, reply.status().as_u16(), started.elapsed().as_secs_f64());
        reply
    }

    async fn route<B>(&self, req: Request<B>) -> (&'static str, Result<Reply, OAuthError>)
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let path = req.uri().path();
        if path.starts_with("/admin/") {
            return ("admin", self.admin(req).await);
        }
        match path {
            "/oauth2/authorize" => ("authorize", self.authorize(get, req.uri().query()).await),
            "/oauth2/token" => ("token", self.post(req, Post::Token).await),
            "/oauth2/introspect" => ("introspect", self.post(req, Post::Introspect).await),
            "/oauth2/revoke" => ("revoke", self.post(req, Post::Revoke).await),
            "/.well-known/oauth-authorization-server" => (
                "metadata",
                only_get(get)
                    .map(|()| json(StatusCode::OK, self.current().metadata.clone(), "public, max-age=300")),
            ),
            "/.well-known/jwks.json" => (
                "jwks",
                only_get(get)
                    .map(|()| json(StatusCode::OK, self.current().keys.jwks(), "public, max-age=60")),
            ),
            "/healthz" => ("healthz", only_get(get).map(|()| text(StatusCode::OK, "ok\n".into()))),
            "/readyz" => ("readyz", self.ready(get).await),
            "/metrics" => ("metrics", only_get(get).map(|()| self.metrics_reply())),
            _ => ("other", Err(OAuthError::not_found())),
        }
    }

    async fn authorize(&self, get: bool, query: Option<&str>) -> Result<Reply, OAuthError> {
        only_get(get)?;
        Ok(authorize::handle(self, query.unwrap_or_default()).await)
    }

    async fn admin<B>(&self, req: Request<B>) -> Result<Reply, OAuthError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body).await?;
        let query = parts.uri.query().unwrap_or_default();
        login::handle(self, &parts.method, parts.uri.path(), query, &parts.headers, &body).await
    }

    /// Reads a form POST and hands it to its endpoint.
    async fn post<B>(&self, req: Request<B>, endpoint: Post) -> Result<Reply, OAuthError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        if req.method() != Method::POST {
            return Err(OAuthError::method_not_allowed("POST"));
        }
        form::check_content_type(req.headers().get(CONTENT_TYPE))?;
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body).await?;
        let form = Form::parse(&body, &["resource"])?;
        let headers = &parts.headers;
        match endpoint {
            Post::Token => {
                token::handle(
                    self,
                    headers,
                    &form,
                    parts.extensions.get::<crate::server::Peer>().map(|p| p.0),
                )
                .await
            }
            Post::Introspect => introspect::handle(self, headers, &form).await,
            Post::Revoke => revoke::handle(self, headers, &form).await,
        }
    }

    async fn ready(&self, get: bool) -> Result<Reply, OAuthError> {
        only_get(get)?;
        self.store.ping().await?;
        Ok(text(StatusCode::OK, "ok\n".into()))
    }

    fn metrics_reply(&self) -> Reply {
        openmetrics(self.metrics.encode())
    }
}
