//! An in-memory Kubernetes API server: a `tower::Service` for
//! `kube::Client::new`, generic over resources (an object is known by its
//! URL path), doing what kube-runtime's controller and our apply layer ask
//! for: get; list and watch, across namespaces too, with label equality
//! selectors and resource versions; create; delete, held by finalizers; and
//! patch as server-side apply, merge patch or JSON patch, on an object or on
//! its status subresource.
//!
//! Left out, because nothing here needs them: field ownership (an apply
//! merges into the object, so a field an applier stops sending stays),
//! owner garbage collection, admission, pagination, bookmarks (optional
//! for a server), and watches without a resourceVersion to resume from
//! (kube's watcher lists first, then watches from the list's version).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// Changes kept for watches resuming from an older resourceVersion; a watch
/// from before them gets `410 Gone` and relists, as from a real API server.
const HISTORY: usize = 1024;

/// The server; clones share the objects.
#[derive(Clone, Default)]
pub struct ApiServer(Arc<Mutex<Store>>);

impl ApiServer {
    /// A client talking to this server, `default` its default namespace.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// The RBAC (verb, resource) of every request so far.
    pub fn used(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().used.clone()
    }
}

impl tower::Service<Request<Body>> for ApiServer {
    type Response = Response<ApiBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move { Ok(serve(&store, request).await.unwrap_or_else(Failure::response)) })
    }
}

async fn serve(store: &Mutex<Store>, request: Request<Body>) -> Result<Response<ApiBody>, Failure> {
    let (head, body) = request.into_parts();
    let at = Target::parse(head.uri.path()).ok_or_else(|| Failure::not_found(head.uri.path()))?;
    let query: HashMap<String, String> =
        form_urlencoded::parse(head.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let body = body.collect_bytes().await.map_err(|e| Failure::bad_request(e.to_string()))?;
    let patch = head.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut store = store.lock().unwrap();
    let (mut verb, resource) = super::rbac::rbac_of(&head.method, head.uri.path());
    if query.get("watch").is_some_and(|w| w == "true") {
        verb = "watch".into();
    }
    store.used.push((verb, resource));
    let (code, object) = match (&head.method, at.name.is_some()) {
        (&Method::GET, true) => (StatusCode::OK, store.get(&at)?.clone()),
        (&Method::GET, false) => {
            let filter = Filter::new(&at, query.get("labelSelector"))?;
            if query.get("watch").is_some_and(|w| w == "true") {
                return store.watch(filter, query.get("resourceVersion"));
            }
            (StatusCode::OK, store.list(&filter))
        }
        (&Method::POST, false) => (StatusCode::CREATED, store.create(&at, parse(&body)?)?),
        (&Method::PATCH, true) => (StatusCode::OK, store.patch(&at, patch, &body)?),
        (&Method::DELETE, true) => (StatusCode::OK, store.delete(&at)?),
        _ => {
            let what = format!("{} {}", head.method, head.uri.path());
            return Err(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", what));
        }
    };
    Ok(reply(code, &object))
}

fn reply(code: StatusCode, body: &Value) -> Response<ApiBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync();
    Response::builder().status(code).header(CONTENT_TYPE, "application/json").body(body).unwrap()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("unreadable body: {e}")))
}

/// A request that failed, answered with a `Status` as kube reads it.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{what} not found"))
    }

    fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code.as_u16()})
    }

    fn response(self) -> Response<ApiBody> {
        reply(self.code, &self.status())
    }
}

/// What a path names: `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
/// `[namespaces/NS/]PLURAL[/NAME[/status]]`.
struct Target {
    /// `v1/secrets`, `tokenplane.io/v1alpha1/oauth2clients`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group_version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ((*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
            _ => (None, rest),
        };
        let (plural, name, status) = match rest {
            [plural] => (plural, None, false),
            [plural, name] => (plural, Some(*name), false),
            [plural, name, "status"] => (plural, Some(*name), true),
            _ => return None,
        };
        Some(Self {
            resource: format!("{group_version}/{plural}"),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            status,
        })
    }

    fn key(&self) -> Key {
        let part = |p: &Option<String>| p.clone().unwrap_or_default();
        (self.resource.clone(), part(&self.namespace), part(&self.name))
    }
}

/// Resource, namespace (empty when cluster-scoped), name.
type Key = (String, String, String);

/// Which objects a list or watch wants.
struct Filter {
    resource: String,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
}

impl Filter {
    /// Takes equality terms only (`a=b`, `a==b`), the selectors used here.
    fn new(at: &Target, selector: Option<&String>) -> Result<Self, Failure> {
        let terms = selector.map(String::as_str).unwrap_or_default().split(',').filter(|t| !t.is_empty());
        let labels = terms
            .map(|term| {
                let (key, value) =
                    term.split_once('=').filter(|(k, _)| !k.ends_with('!')).ok_or_else(|| {
                        Failure::bad_request(format!("unsupported label selector term {term:?}"))
                    })?;
                Ok((key.to_owned(), value.trim_start_matches('=').to_owned()))
            })
            .collect::<Result<_, Failure>>()?;
        Ok(Self { resource: at.resource.clone(), namespace: at.namespace.clone(), labels })
    }

    fn matches(&self, key: &Key, labels: &Value) -> bool {
        key.0 == self.resource
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.labels.iter().all(|(k, v)| labels[k] == *v.as_str())
    }
}

/// A change as watchers see it: one line of the watch stream.
struct Change {
    version: u64,
    key: Key,
    labels: Value,
    line: Bytes,
}

struct Watch {
    filter: Filter,
    lines: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    /// The resourceVersion of the last change, one counter for everything.
    version: u64,
    history: VecDeque<Change>,
    /// Watches resuming from before this version missed changes.
    forgotten: u64,
    watches: Vec<Watch>,
    /// The RBAC (verb, resource) of every request.
    used: Vec<(String, String)>,
}

impl Store {
    fn get(&self, at: &Target) -> Result<&Value, Failure> {
        let key = at.key();
        self.objects.get(&key).ok_or_else(|| Failure::not_found(&format!("{} {}", key.0, key.2)))
    }

    fn list(&self, filter: &Filter) -> Value {
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|(key, object)| filter.matches(key, &object["metadata"]["labels"]))
            .map(|(_, object)| object)
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": self.version.to_string()},
               "items": items})
    }

    fn watch(&mut self, filter: Filter, from: Option<&String>) -> Result<Response<ApiBody>, Failure> {
        let from: u64 = from
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Failure::bad_request("a watch resumes from a resourceVersion".into()))?;
        let (lines, receiver) = mpsc::unbounded_channel();
        if from < self.forgotten {
            let gone = Failure::new(StatusCode::GONE, "Expired", format!("too old resource version: {from}"));
            lines.send(line("ERROR", &gone.status())).unwrap();
        } else {
            for change in self.history.iter().filter(|c| c.version > from) {
                if filter.matches(&change.key, &change.labels) {
                    lines.send(change.line.clone()).unwrap();
                }
            }
            self.watches.push(Watch { filter, lines });
        }
        let stream = futures_util::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), r))
        });
        Ok(Response::new(StreamBody::new(stream).boxed_unsync()))
    }

    fn create(&mut self, at: &Target, mut object: Value) -> Result<Value, Failure> {
        let meta = &mut object["metadata"];
        if meta["name"].is_null() {
            let prefix = meta["generateName"].as_str().unwrap_or_default();
            meta["name"] = format!("{prefix}{}", self.version + 1).into();
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let key = (at.resource.clone(), at.namespace.clone().unwrap_or_default(), name);
        if self.objects.contains_key(&key) {
            return Err(Failure::new(StatusCode::CONFLICT, "AlreadyExists", format!("{} exists", key.2)));
        }
        if let Some(namespace) = &at.namespace {
            meta["namespace"] = namespace.as_str().into();
        }
        meta["uid"] = format!("uid-{}", self.version + 1).into();
        meta["creationTimestamp"] = now();
        meta["generation"] = 1.into();
        // Status is the controller's to write, through the subresource.
        set_or_remove(&mut object, "status", None);
        Ok(self.write(key, object, "ADDED"))
    }

    fn patch(&mut self, at: &Target, content_type: &str, body: &[u8]) -> Result<Value, Failure> {
        let Some(old) = self.objects.get(&at.key()).cloned() else {
            return match content_type {
                "application/apply-patch+yaml" if !at.status => self.create(at, parse(body)?),
                _ => Err(Failure::not_found(at.name.as_deref().unwrap_or_default())),
            };
        };
        let mut new = old.clone();
        match content_type {
            // An apply is JSON here; its fields replace those of the object.
            "application/apply-patch+yaml" | "application/merge-patch+json" => {
                json_patch::merge(&mut new, &parse(body)?);
            }
            "application/json-patch+json" => {
                let ops: Vec<json_patch::PatchOperation> = parse(body)?;
                json_patch::patch(&mut new, &tests_of_absent_null_dropped(ops, &old)).map_err(|e| {
                    Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("JSON patch: {e}"))
                })?;
            }
            other => {
                return Err(Failure::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", other));
            }
        }
        // The status subresource changes only the status; the object, all but the status.
        let (mut changed, status_from) = if at.status { (old.clone(), &new) } else { (new.clone(), &old) };
        set_or_remove(&mut changed, "status", status_from.get("status").cloned());
        Ok(self.update(at.key(), &old, changed))
    }

    fn delete(&mut self, at: &Target) -> Result<Value, Failure> {
        let old = self.get(at)?.clone();
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Ok(old);
        }
        let mut deleting = old.clone();
        deleting["metadata"]["deletionTimestamp"] = now();
        Ok(self.update(at.key(), &old, deleting))
    }

    /// Stores `new` in place of `old`: server-set metadata kept, the
    /// generation bumped when more than metadata and status changed,
    /// nothing written when nothing changed, and the object gone once it
    /// is being deleted and no finalizer holds it.
    fn update(&mut self, key: Key, old: &Value, mut new: Value) -> Value {
        let meta = &mut new["metadata"];
        for field in ["uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp"] {
            if !old["metadata"][field].is_null() {
                meta[field] = old["metadata"][field].clone();
            }
        }
        if meta["finalizers"].as_array().is_some_and(Vec::is_empty) {
            set_or_remove(meta, "finalizers", None);
        }
        if content(&new) != content(old) {
            new["metadata"]["generation"] = (old["metadata"]["generation"].as_i64().unwrap_or(0) + 1).into();
        }
        let meta = &new["metadata"];
        if !meta["deletionTimestamp"].is_null() && meta["finalizers"].is_null() {
            self.objects.remove(&key);
            return self.write(key, new, "DELETED");
        }
        if new == *old {
            return new;
        }
        self.write(key, new, "MODIFIED")
    }

    /// Gives the change the next resourceVersion and tells the watches.
    fn write(&mut self, key: Key, mut object: Value, kind: &str) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        let change = Change {
            version: self.version,
            labels: object["metadata"]["labels"].clone(),
            line: line(kind, &object),
            key: key.clone(),
        };
        self.watches.retain(|w| {
            !w.filter.matches(&change.key, &change.labels) || w.lines.send(change.line.clone()).is_ok()
        });
        self.history.push_back(change);
        if self.history.len() > HISTORY {
            self.forgotten = self.history.pop_front().map_or(0, |c| c.version);
        }
        if kind != "DELETED" {
            self.objects.insert(key, object.clone());
        }
        object
    }
}

/// One watch event, newline-delimited.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

/// What the generation counts: everything but metadata and status.
fn content(object: &Value) -> Value {
    let mut content = object.clone();
    if let Some(fields) = content.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    content
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(fields) = object.as_object_mut() {
        match value {
            Some(value) => fields.insert(field.to_owned(), value),
            None => fields.remove(field),
        };
    }
}

/// The API server treats `test` against `null` as passing when the field
/// is absent (kube's finalizer helper relies on it); the json-patch crate
/// fails it, so such tests are checked here and dropped.
fn tests_of_absent_null_dropped(
    ops: Vec<json_patch::PatchOperation>,
    object: &Value,
) -> Vec<json_patch::PatchOperation> {
    ops.into_iter()
        .filter(|op| match op {
            json_patch::PatchOperation::Test(t) => {
                !(t.value.is_null() && object.pointer(t.path.as_str()).is_none())
            }
            _ => true,
        })
        .collect()
}

fn now() -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now).unwrap().to_string().into()
}
