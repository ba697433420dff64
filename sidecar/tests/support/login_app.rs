//! A tiny login app, as a team would write one: it "authenticates" the
//! person (here: as whoever the test says), then accepts or rejects the
//! login and consent challenges through the issuer's admin API and sends the
//! browser on. Not a product part.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the person does at the login and consent pages.
#[derive(Clone, Debug)]
pub struct Person {
    /// Logs in as this subject; `None` fails the login.
    pub subject: Option<String>,
    /// Grants these scopes at consent (all requested when `None`); `deny` refuses.
    pub grant_scope: Option<Vec<String>>,
    pub deny: bool,
    pub remember: bool,
}

impl Default for Person {
    fn default() -> Self {
        Self { subject: Some("alice".into()), grant_scope: None, deny: false, remember: false }
    }
}

pub struct LoginApp {
    pub url: String,
    pub person: Arc<Mutex<Person>>,
    /// Consent pages shown so far.
    pub consents_shown: Arc<Mutex<u32>>,
}

struct State {
    issuer: String,
    admin_token: String,
    http: reqwest::Client,
    person: Arc<Mutex<Person>>,
    consents_shown: Arc<Mutex<u32>>,
}

impl LoginApp {
    /// Serves on `listener`, talking to the issuer at `issuer`.
    pub fn serve(listener: TcpListener, issuer: String, admin_token: &str) -> Self {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let person = Arc::new(Mutex::new(Person::default()));
        let consents_shown = Arc::new(Mutex::new(0));
        let state = Arc::new(State {
            issuer,
            admin_token: admin_token.to_owned(),
            http: super::https_client().build().unwrap(),
            person: person.clone(),
            consents_shown: consents_shown.clone(),
        });
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.page(req).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Self { url, person, consents_shown }
    }
}

impl State {
    async fn page(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
        let person = self.person.lock().unwrap().clone();
        let redirect_to = match req.uri().path() {
            "/login" => {
                let challenge = param("login_challenge");
                let info = self.admin("GET", "login", &challenge, None).await;
                assert!(info["client_id"].is_string(), "login info: {info}");
                match &person.subject {
                    Some(subject) => {
                        self.admin("POST", "login/accept", &challenge, Some(json!({"subject": subject})))
                            .await
                    }
                    None => {
                        self.admin(
                            "POST",
                            "login/reject",
                            &challenge,
                            Some(json!({"error_description": "bad password"})),
                        )
                        .await
                    }
                }
            }
            "/consent" => {
                *self.consents_shown.lock().unwrap() += 1;
                let challenge = param("consent_challenge");
                let info = self.admin("GET", "consent", &challenge, None).await;
                assert_eq!(info["subject"].as_str(), person.subject.as_deref(), "consent info: {info}");
                if person.deny {
                    self.admin("POST", "consent/reject", &challenge, None).await
                } else {
                    let body = json!({"grant_scope": person.grant_scope, "remember": person.remember});
                    self.admin("POST", "consent/accept", &challenge, Some(body)).await
                }
            }
            other => panic!("login app has no page {other}"),
        };
        let location =
            redirect_to["redirect_to"].as_str().unwrap_or_else(|| panic!("no redirect_to: {redirect_to}"));
        Response::builder().status(302).header("location", location).body(Full::default()).unwrap()
    }

    async fn admin(&self, method: &str, path: &str, challenge: &str, body: Option<Value>) -> Value {
        let param = if path.starts_with("login") { "login_challenge" } else { "consent_challenge" };
        let url = format!("{}/admin/{path}?{param}={challenge}", self.issuer);
        let mut req = self.http.request(method.parse().unwrap(), url).bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "admin {path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}
