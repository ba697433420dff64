//! The agent: runs next to a workload, validates bearer tokens from memory
//! and vends tokens for the workload's own client. It holds no private key.
//!
//! Background tasks keep its state current: the issuer's JWKS, the
//! revocation feed from Redis, and the mounted credentials.

pub mod credentials;
pub mod feed;
pub mod issuer_client;
pub mod jwks;
mod metrics;
pub mod validate;
pub mod vend;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Body;
use serde_json::json;
use tokenplane_api::claims::AccessTokenClaims;

use crate::heartbeat;
use crate::issuer::form::{self, Form};
use crate::keys::Checks;
use crate::oauth_error::OAuthError;
use crate::reply::{BoxError, Reply, error_reply, json_reply, only_get, openmetrics, read_body, text};
use crate::store::RedisConfig;
use credentials::Watched;
use feed::Revocations;
use issuer_client::IssuerClient;
use jwks::Jwks;
use metrics::Metrics;
use validate::{Rejection, Validator};
use vend::{VendError, Vendor};

/// How an agent runs; see `tokenplane-sidecar agent --help`.
pub struct Settings {
    /// The issuer's base URL, also the `iss` tokens must carry.
    pub issuer: String,
    /// Audiences this workload accepts; validation is off without any.
    pub audiences: Vec<String>,
    pub clock_skew: Duration,
    /// Past this without word from Redis, validation fails closed.
    pub max_staleness: Duration,
    pub jwks_refresh: Duration,
    /// Least time between JWKS fetches caused by unknown kids.
    pub jwks_min_refresh: Duration,
    /// Verified tokens remembered.
    pub cache_capacity: usize,
    pub credentials_dir: PathBuf,
    pub credentials_poll: Duration,
    /// PEM bundle of the CAs trusted for the issuer's certificate, instead
    /// of the system's roots.
    pub issuer_ca_file: Option<PathBuf>,
    /// Username and password, when unset, come from the credentials folder.
    pub redis: RedisConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error("cannot build the HTTP client for the issuer: {0}")]
    Http(#[from] reqwest::Error),
    #[error(
        "cannot use the issuer CA bundle {path}: {reason}; --issuer-ca-file must name a PEM file of CA certificates"
    )]
    IssuerCa { path: PathBuf, reason: String },
}

pub struct Agent {
    validator: Validator,
    vendor: Vendor,
    jwks: Arc<Jwks>,
    revocations: Arc<Revocations>,
    metrics: Metrics,
    validating: bool,
}

impl Agent {
    /// Builds the agent and starts its background tasks.
    pub fn start(settings: Settings) -> Result<Self, AgentError> {
        let credentials = Arc::new(Watched::load(&settings.credentials_dir)?);
        let http = Arc::new(IssuerClient::load(settings.issuer_ca_file.as_deref())?);
        tokio::spawn(http.clone().follow(settings.credentials_poll));
        let checks = Checks {
            leeway: settings.clock_skew.as_secs(),
            issuer: Some(settings.issuer.clone()),
            audiences: settings.audiences.clone(),
        };
        let jwks = Arc::new(Jwks::new(&settings.issuer, http.clone(), checks, settings.jwks_min_refresh));
        let revocations = Arc::new(Revocations::new(settings.max_staleness));
        tokio::spawn(jwks.clone().run(settings.jwks_refresh));
        let reporter = feed::Reporter {
            issuer: settings.issuer.clone(),
            jwks: jwks.clone(),
            instance: heartbeat::instance(),
        };
        tokio::spawn(feed::follow(
            revocations.clone(),
            settings.redis.clone(),
            credentials.clone(),
            reporter,
        ));
        tokio::spawn(credentials.clone().watch(settings.credentials_poll));
        Ok(Self {
            validator: Validator::new(
                jwks.clone(),
                revocations.clone(),
                settings.cache_capacity,
                settings.clock_skew.as_secs(),
            ),
            vendor: Vendor::new(&settings.issuer, http, credentials, revocations.clone()),
            jwks,
            revocations,
            metrics: Metrics::default(),
            validating: !settings.audiences.is_empty(),
        })
    }

    /// Adds the TLS listener's metrics to `/metrics`.
    pub fn with_tls_metrics(mut self, tls: &crate::tls::Metrics) -> Self {
        tls.register(self.metrics.registry_mut());
        self
    }

    /// Serves one request. Never fails: every error becomes a JSON body.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (endpoint, result) = self.route(req).await;
        let reply = result.unwrap_or_else(|e| error_reply(&e));
        self.metrics.request(endpoint, reply.status().as_u16(), started.elapsed().as_secs_f64());
        reply
    }

    async fn route<B>(&self, req: Request<B>) -> (&'static str, Result<Reply, OAuthError>)
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/v1/validate" => ("validate", self.validate_bearer(req).await),
            "/oauth2/introspect" => ("introspect", self.introspect(req).await),
            "/v1/token" => ("token", self.vend(get, req.uri().query().unwrap_or_default()).await),
            "/healthz" => ("healthz", only_get(get).map(|()| text(StatusCode::OK, "ok\n".into()))),
            "/readyz" => ("readyz", only_get(get).map(|()| self.ready())),
            "/metrics" => ("metrics", only_get(get).map(|()| self.metrics_reply())),
            _ => ("other", Err(OAuthError::not_found())),
        }
    }

    /// `POST /v1/validate` with `Authorization: Bearer <token>`: the claims,
    /// or why the token is refused.
    async fn validate_bearer<B>(&self, req: Request<B>) -> Result<Reply, OAuthError> {
        self.accepting(req.method())?;
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| OAuthError::invalid_request("send the token as Authorization: Bearer <token>"))?;
        match self.check(token).await {
            Ok(claims) => Ok(json_reply(&Valid { active: true, claims: &claims })),
            Err(rejection) => Ok(rejected(&rejection)),
        }
    }

    /// `POST /oauth2/introspect` (RFC 7662 shape) for apps that speak it.
    async fn introspect<B>(&self, req: Request<B>) -> Result<Reply, OAuthError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        self.accepting(req.method())?;
        form::check_content_type(req.headers().get(CONTENT_TYPE))?;
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body).await?;
        let form = Form::parse(&body, &[])?;
        let token = form.require("token")?;
        match self.check(token).await {
            Ok(claims) => {
                let mut reply = serde_json::to_value(&claims).expect("claims serialize");
                reply["active"] = true.into();
                Ok(json_reply(&reply))
            }
            Err(rejection) if rejection.is_unavailable() => Ok(rejected(&rejection)),
            Err(_) => Ok(json_reply(&json!({"active": false}))),
        }
    }

    fn accepting(&self, method: &Method) -> Result<(), OAuthError> {
        if method != Method::POST {
            return Err(OAuthError::method_not_allowed("POST"));
        }
        if !self.validating {
            return Err(OAuthError::invalid_request(
                "this agent validates no tokens: start it with --audience naming what this workload accepts",
            ));
        }
        Ok(())
    }

    async fn check(&self, token: &str) -> Result<AccessTokenClaims, Rejection> {
        let result = self.validator.validate(token).await;
        match &result {
            Ok(_) => self.metrics.validated("valid"),
            Err(rejection) => {
                tracing::debug!(reason = rejection.reason(), error = %rejection, "token rejected");
                self.metrics.validated(rejection.reason());
            }
        }
        result
    }

    /// `GET /v1/token?audience=..&scope=..`: a token of the workload's client.
    async fn vend(&self, get: bool, query: &str) -> Result<Reply, OAuthError> {
        only_get(get)?;
        let form = Form::parse(query.as_bytes(), &[])?;
        match self.vendor.token(form.get("audience"), form.get("scope")).await {
            Ok(token) => {
                self.metrics.vended("ok");
                Ok(json_reply(&token))
            }
            Err(e) => {
                self.metrics.vended("error");
                tracing::warn!(error = %e, "could not get a token from the issuer");
                Ok(vend_error(&e))
            }
        }
    }

    fn ready(&self) -> Reply {
        let mut missing = Vec::new();
        if self.jwks.keys().is_empty() {
            missing.push("no signing keys from the issuer's JWKS yet");
        }
        if !self.revocations.fresh() {
            missing.push("the revocation feed is not in sync with Redis");
        }
        match missing.is_empty() {
            true => text(StatusCode::OK, "ok\n".into()),
            false => text(StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", missing.join("; ")).into()),
        }
    }

    fn metrics_reply(&self) -> Reply {
        let staleness = Some(self.revocations.staleness()).filter(|s| *s != Duration::MAX);
        openmetrics(self.metrics.encode(
            staleness.map(|s| s.as_secs_f64()),
            self.revocations.len(),
            self.validator.remembered(),
        ))
    }
}

/// The answer for a valid token.
#[derive(serde::Serialize)]
struct Valid<'a> {
    active: bool,
    claims: &'a AccessTokenClaims,
}

/// 401 with the reason (RFC 6750 §3), or 503 while the feed is stale.
fn rejected(rejection: &Rejection) -> Reply {
    let (status, error) = match rejection.is_unavailable() {
        true => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        false => (StatusCode::UNAUTHORIZED, "invalid_token"),
    };
    let mut reply = json_reply(&json!({
        "active": false,
        "error": error,
        "reason": rejection.reason(),
        "error_description": rejection.to_string(),
    }));
    *reply.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        reply
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    }
    reply
}

/// The issuer's own refusal (its status and RFC 6749 body) or 502.
fn vend_error(e: &VendError) -> Reply {
    let (status, body) = match e {
        VendError::Refused { status, body } if (400..500).contains(status) => {
            (StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY), body.clone())
        }
        _ => (
            StatusCode::BAD_GATEWAY,
            json!({"error": "temporarily_unavailable", "error_description": e.to_string()}).to_string(),
        ),
    };
    let mut reply = crate::reply::no_store(body.into_bytes());
    *reply.status_mut() = status;
    reply
}

/// The agent's probes alone, for the kubelet: it reaches a pod's IP, and
/// the agent's own listener stays on loopback. Nothing else is served.
pub struct Probes(pub Arc<Agent>);

impl Probes {
    fn reply(&self, req: &Request<hyper::body::Incoming>) -> Reply {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let answer = match req.uri().path() {
            "/healthz" => only_get(get).map(|()| text(StatusCode::OK, "ok\n".into())),
            "/readyz" => only_get(get).map(|()| self.0.ready()),
            _ => Err(OAuthError::not_found()),
        };
        answer.unwrap_or_else(|e| error_reply(&e))
    }
}

impl crate::server::Handler for Probes {
    fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> impl Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send {
        std::future::ready(self.reply(&req))
    }
}

impl crate::server::Handler for Agent {
    fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> impl Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send {
        Agent::handle(self, req)
    }
}
