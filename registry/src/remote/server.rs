//! `vmt-hub serve`: the OCI Distribution API (the part push and pull use, tag listing,
//! the catalog, DELETE, the OCI 1.1 referrers API in `server/attached.rs`) answered
//! from a local registry, and a web catalog for browsers (`server/catalog.rs`).
//!
//! Blobs are stored once (the store is content-addressed) but belong to repositories,
//! as in distribution: a blob is found in a repository once uploaded or mounted there,
//! or as part of a bundle tagged or an artifact attached there.
//!
//! What a hostile client can make it do is bounded:
//! - the bearer token is checked before any body is read;
//! - connections are capped ([`ServeOptions::max_connections`]) and closed when the
//!   client sends no request headers within [`ServeOptions::header_timeout`] (idle
//!   keep-alive connections included) or stalls a body for [`ServeOptions::idle_timeout`];
//! - request bodies are streamed to disk, never held whole: at most
//!   [`ServeOptions::max_body`] per request and [`ServeOptions::max_blob`] per blob;
//! - upload sessions are bounded in number ([`ServeOptions::max_uploads`]), expire
//!   after [`ServeOptions::upload_ttl`] without a request, and are removed at start
//!   and by `gc`; `Content-Range` must continue the session exactly;
//! - a manifest is stored (201) only when the whole bundle validates, as `export`
//!   would: components match the config, tensors have their names, shapes and dtype,
//!   values are finite, declared sizes are the real ones;
//! - a blob whose file no longer hashes to its digest is neither served nor vouched
//!   for by HEAD (it answers 404 and logs it, so that a push uploads it again);
//! - error bodies never show server paths (details go to the log).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{valid_repo_name, valid_tag};
use crate::bundle::check::{check_component, check_layers, check_manifest, MAX_MANIFEST_BYTES};
use crate::bundle::dir::parse_config;
use crate::digest::Digest;
use crate::oci::{error_body, ArtifactManifest, ErrorCode, Manifest, MANIFEST_MEDIA_TYPE};
use crate::reference::TagName;
use crate::store::Registry;

mod attached;
mod catalog;

/// Default largest request body (one PUT or PATCH).
pub const MAX_BODY: usize = 256 << 20;
/// Default largest blob (a whole upload session).
pub const MAX_BLOB: u64 = 4 << 30;

/// Options of `vmt-hub serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer <token>` on every request.
    pub token: Option<String>,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Largest blob in bytes (all chunks of an upload session).
    pub max_blob: u64,
    /// Upload sessions open at once.
    pub max_uploads: usize,
    /// An upload session with no request for this long is deleted.
    pub upload_ttl: Duration,
    /// Time a client has to send a request's headers (and how long an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Longest pause inside a request body.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl ServeOptions {
    /// The defaults: 256 MiB bodies, 4 GiB blobs, 64 uploads that expire after an
    /// hour, 10 s for headers, 60 s of body silence, 256 connections.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            max_body: MAX_BODY,
            max_blob: MAX_BLOB,
            max_uploads: 64,
            upload_ttl: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

struct Upload {
    path: PathBuf,
    size: u64,
    touched: Instant,
    /// A request is writing to it.
    busy: bool,
}

struct ServerState {
    reg: Registry,
    /// Requests being handled (the index is released when none is).
    in_flight: AtomicUsize,
    /// Requests started so far (to tell whether one came while idle).
    started: std::sync::atomic::AtomicU64,
    /// `serve.lock`, held while serving: other processes leave the upload sessions be.
    _serving: Option<crate::store::ServeLock>,
    uploads_dir: PathBuf,
    uploads: Mutex<HashMap<String, Upload>>,
    /// Blobs hashed and found intact: digest -> (size, mtime) at that time.
    verified: Mutex<HashMap<Digest, (u64, SystemTime)>>,
    opts: ServeOptions,
}

type Shared = Arc<ServerState>;

fn oci_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        [("Content-Type", "application/json")],
        error_body(code, message),
    )
        .into_response()
}

/// A server-side failure: logged in full, answered without details (no paths).
fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("internal error: {e}");
    oci_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "internal server error (details are in the server's log)",
    )
}

fn not_allowed() -> Response {
    oci_error(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        "method not allowed",
    )
}

/// Builds the router over an open registry. Upload sessions left by an earlier run
/// are removed.
pub fn router(reg: Registry, opts: ServeOptions) -> std::io::Result<Router> {
    Ok(router_and_state(reg, opts)?.0)
}

fn router_and_state(reg: Registry, opts: ServeOptions) -> std::io::Result<(Router, Shared)> {
    let uploads_dir = reg.blob_store().uploads_dir();
    std::fs::create_dir_all(&uploads_dir)?;
    let _ = reg.blob_store().clean_uploads();
    let serving = crate::store::ServeLock::acquire(reg.root());
    let state = Arc::new(ServerState {
        _serving: serving,
        in_flight: AtomicUsize::new(0),
        started: std::sync::atomic::AtomicU64::new(0),
        reg,
        uploads_dir,
        uploads: Mutex::new(HashMap::new()),
        verified: Mutex::new(HashMap::new()),
        opts,
    });
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&state));
    // Idle from the start: other processes may use the registry until a request comes.
    state.reg.release_index();
    Ok((router, state))
}

/// Serves until Ctrl-C; `ready` gets the bound address (useful with port 0).
pub async fn serve(
    reg: Registry,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    serve_until(reg, opts, ready, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves until `shutdown` completes, then lets requests in flight finish (10 s at most).
pub async fn serve_until(
    reg: Registry,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    ready(listener.local_addr()?);
    let max = opts.max_connections.max(1);
    let header_timeout = opts.header_timeout;
    let (app, state) = router_and_state(reg, opts)?;
    let sweeper = {
        let state = Arc::clone(&state);
        let every = state
            .opts
            .upload_ttl
            .clamp(Duration::from_millis(200), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                expire_uploads(&state);
            }
        })
    };
    let releaser = tokio::spawn(release_when_idle(Arc::clone(&state)));
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore open"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    // Headers and body go out as separate writes: without this, Nagle
                    // holds the body until the client's delayed ACK (about 40 ms).
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
    sweeper.abort();
    releaser.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(max as u32)).await;
    Ok(())
}

/// Runs [`serve`] on its own tokio runtime until the process stops.
pub fn serve_blocking(
    reg: Registry,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(reg, opts, ready))
}

/// What a `/v2/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    UploadStart(String),
    Upload(String, String),
    Blob(String, String),
    Referrers(String, String),
}

impl Route {
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Blob(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

/// The API route a request path names, if any.
pub(crate) fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.into()));
    }
    if let Some((name, r)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name.into(), r.into()));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name.into()));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(name.into(), id.into()));
    }
    if let Some((name, d)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob(name.into(), d.into()));
    }
    if let Some((name, d)) = rest.rsplit_once("/referrers/") {
        return Some(Route::Referrers(name.into(), d.into()));
    }
    None
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        // Decoded: Go clients send `from=team%2Fvmt`.
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Runs registry work (file and index I/O) off the async threads.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(internal)
}

/// Requests reach the registry's index only where they need it (tags, manifests: see
/// [`use_index`]); blob transfers never hold it, so other vmt-hub processes can use the
/// registry while `serve` runs.
async fn handle(State(st): State<Shared>, req: Request) -> Response {
    handle_request(&st, req).await
}

/// How long `serve` keeps the index after the last request that used it.
const RELEASE_AFTER_IDLE: Duration = Duration::from_millis(50);

/// A request's use of the registry's index: held while this lives (dropped with the
/// request, also when the client goes away mid-way).
struct IndexUse {
    st: Shared,
    hold: Option<crate::store::IndexHold>,
}

impl Drop for IndexUse {
    fn drop(&mut self) {
        self.hold = None;
        self.st.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lets go of the registry's index whenever no request has used it for
/// [`RELEASE_AFTER_IDLE`], so that other processes can open the registry between bursts
/// of requests. A loop rather than a timer per request: a request cancelled while it
/// waited for the lock still ends up released.
async fn release_when_idle(st: Shared) {
    let mut seen = st.started.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(RELEASE_AFTER_IDLE).await;
        let now = st.started.load(Ordering::SeqCst);
        if now == seen && st.in_flight.load(Ordering::SeqCst) == 0 {
            let st = Arc::clone(&st);
            let _ = tokio::task::spawn_blocking(move || st.reg.release_index()).await;
        }
        seen = now;
    }
}

/// Runs `f` (registry work, off the async threads) with the registry's index held.
async fn with_index(
    st: Shared,
    f: impl FnOnce(&ServerState) -> Response + Send + 'static,
) -> Response {
    match use_index(&st).await {
        Ok(used) => {
            let r = blocking(move || f(&st)).await;
            drop(used);
            r
        }
        Err(r) => r,
    }
}

/// Takes the registry's index for one request, waiting (off the async threads) for
/// another process to let go of it; 503 `UNAVAILABLE` when it does not in time.
async fn use_index(st: &Shared) -> Result<IndexUse, Response> {
    st.started.fetch_add(1, Ordering::SeqCst);
    st.in_flight.fetch_add(1, Ordering::SeqCst);
    let mut used = IndexUse {
        st: Arc::clone(st),
        hold: None,
    };
    let st2 = Arc::clone(st);
    match tokio::task::spawn_blocking(move || st2.reg.hold_index()).await {
        Ok(Ok(hold)) => {
            used.hold = Some(hold);
            Ok(used)
        }
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            Err(oci_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the registry is busy with another vmt-hub process; try again",
            ))
        }
        Err(e) => Err(internal(e)),
    }
}

/// 401 with a Basic challenge when serve has a token and `headers` do not carry it.
fn refuse_unauthorized(st: &Shared, headers: &axum::http::HeaderMap) -> Option<Response> {
    let t = st.opts.token.as_ref()?;
    let given = headers.get("Authorization").and_then(|v| v.to_str().ok());
    if authorized(given, t) {
        return None;
    }
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "authentication required: the token as a bearer token, or as the password \
         of basic auth (any user name)",
    );
    // Basic: what docker, skopeo, oras and curl -u answer with a user and password; a
    // bearer token sent directly is accepted as well.
    r.headers_mut().insert(
        "WWW-Authenticate",
        HeaderValue::from_static("Basic realm=\"vmt-hub\""),
    );
    r.headers_mut()
        .insert("Connection", HeaderValue::from_static("close"));
    Some(r)
}

/// `/v2/`: this is a registry of the distribution API.
fn api_base() -> Response {
    (
        StatusCode::OK,
        [
            ("Docker-Distribution-API-Version", "registry/2.0"),
            ("Content-Type", "application/json"),
        ],
        "{}",
    )
        .into_response()
}

/// DELETE of an upload session: forgets it and its bytes.
fn cancel_upload(st: &Shared, id: &str) -> Response {
    if let Some(u) = st.uploads.lock().expect("lock").remove(id) {
        let _ = std::fs::remove_file(u.path);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn handle_request(st: &Shared, req: Request) -> Response {
    let st = Arc::clone(st);
    let (parts, body) = req.into_parts();
    // Authentication comes first: an unauthenticated body is never read.
    if let Some(refused) = refuse_unauthorized(&st, &parts.headers) {
        return refused;
    }
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let path = uri.path().to_string();
    let read = method == Method::GET || method == Method::HEAD;
    if read && (path == "/" || path.starts_with(catalog::UI)) {
        let query = uri.query().map(str::to_string);
        return with_index(st, move |st| {
            catalog::answer(st, &path, query.as_deref(), &headers)
        })
        .await;
    }
    let Some(route) = route(uri.path()) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "unknown endpoint",
        );
    };
    if route.name().is_some_and(|n| !valid_repo_name(n)) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            "invalid repository name",
        );
    }
    match (route, method) {
        (Route::Base, _) => api_base(),
        (Route::Catalog, Method::GET) => with_index(st, move |st| catalog(st, &uri)).await,
        (Route::Tags(n), Method::GET) => with_index(st, move |st| tags(st, &n, &uri)).await,
        (Route::Manifest(n, r), m @ (Method::GET | Method::HEAD)) => {
            with_index(st, move |st| get_manifest(st, &n, &r, m == Method::HEAD)).await
        }
        (Route::Manifest(n, r), Method::DELETE) => {
            with_index(st, move |st| delete_manifest(st, &n, &r)).await
        }
        (Route::Manifest(n, r), Method::PUT) => {
            // The body first (bounded, without the index), then the index to store it.
            let bytes = match read_small_body(&st, body, MAX_MANIFEST_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            with_index(st, move |st| put_manifest(st, &n, &r, &bytes)).await
        }
        (Route::UploadStart(n), Method::POST) => start_upload(&st, &n, &uri, body).await,
        (Route::Upload(n, id), Method::PATCH) => {
            match append(&st, &id, Some(&headers), body).await {
                Ok(size) => (StatusCode::ACCEPTED, upload_headers(&n, &id, size)).into_response(),
                Err(r) => r,
            }
        }
        (Route::Upload(n, id), Method::PUT) => finish_upload(&st, &n, &id, &uri, body).await,
        (Route::Upload(n, id), Method::GET) => upload_status(&st, &n, &id),
        (Route::Upload(_, id), Method::DELETE) => cancel_upload(&st, &id),
        (Route::Blob(n, d), m @ (Method::GET | Method::HEAD)) => {
            let range = headers.get("Range").and_then(|v| v.to_str().ok());
            get_blob(&st, &n, &d, m == Method::HEAD, range).await
        }
        (Route::Referrers(n, d), Method::GET) => {
            with_index(st, move |st| attached::referrers(st, &n, &d, &uri)).await
        }
        _ => not_allowed(),
    }
}

/// Reads a body of at most `limit` bytes into memory (manifests).
async fn read_small_body(st: &ServerState, body: Body, limit: u64) -> Result<Vec<u8>, Response> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        match tokio::time::timeout(st.opts.idle_timeout, stream.next()).await {
            Err(_) => return Err(body_timeout()),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(bad_body(e)),
            Ok(Some(Ok(chunk))) => {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large(&format!("the body is larger than {limit} bytes")));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

fn body_timeout() -> Response {
    oci_error(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::BlobUploadInvalid,
        "the request body stalled",
    )
}

fn bad_body(e: impl std::fmt::Display) -> Response {
    tracing::debug!("request body: {e}");
    oci_error(
        StatusCode::BAD_REQUEST,
        ErrorCode::BlobUploadInvalid,
        "the request body could not be read",
    )
}

fn too_large(message: &str) -> Response {
    oci_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        message,
    )
}

/// Streams a request body onto the end of `path`, refusing more than `limit` bytes
/// in this request; returns the bytes written.
async fn stream_body(
    st: &ServerState,
    body: Body,
    path: &Path,
    limit: u64,
) -> Result<u64, Response> {
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .await
        .map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    let result = loop {
        match tokio::time::timeout(st.opts.idle_timeout, stream.next()).await {
            Err(_) => break Err(body_timeout()),
            Ok(None) => break Ok(written),
            Ok(Some(Err(e))) => break Err(bad_body(e)),
            Ok(Some(Ok(chunk))) => {
                written += chunk.len() as u64;
                if written > limit {
                    break Err(too_large(&format!(
                        "more than the {limit} bytes allowed here"
                    )));
                }
                if let Err(e) = file.write_all(&chunk).await {
                    break Err(internal(e));
                }
            }
        }
    };
    // tokio's File writes in the background: wait for every write to land, also on
    // the error path, so that a caller's truncate cannot run before a late write.
    file.flush().await.map_err(internal)?;
    result
}

/// The repositories: names with at least one tag, in order, paginated with `n` and
/// `last` as the distribution spec says.
fn catalog(st: &ServerState, uri: &Uri) -> Response {
    match st.reg.tag_list() {
        Ok(tags) => {
            let names: BTreeSet<String> = tags
                .iter()
                .filter_map(|(t, _)| t.rsplit_once(':').map(|(n, _)| n.to_string()))
                .collect();
            let (page, link) = paginate(names.into_iter().collect(), uri, "/v2/_catalog");
            with_link(
                axum::Json(serde_json::json!({"repositories": page})).into_response(),
                link,
            )
        }
        Err(e) => internal(e),
    }
}

/// One page of a sorted list: the items after `last`, at most `n` of them, and the
/// `Link` to the next page when there are more.
fn paginate(items: Vec<String>, uri: &Uri, path: &str) -> (Vec<String>, Option<String>) {
    let last = query(uri, "last");
    let n = query(uri, "n").and_then(|n| n.parse::<usize>().ok());
    let after: Vec<String> = items
        .into_iter()
        .filter(|i| last.as_ref().is_none_or(|l| i > l))
        .collect();
    match n {
        // An empty page ends the listing: a `Link` back to the same query would loop.
        Some(0) => (Vec::new(), None),
        Some(n) if after.len() > n => {
            let page: Vec<String> = after.into_iter().take(n).collect();
            let link = format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                page.last().map(String::as_str).unwrap_or("")
            );
            (page, Some(link))
        }
        _ => (after, None),
    }
}

fn with_link(mut r: Response, link: Option<String>) -> Response {
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert("Link", l);
    }
    r
}

fn tags(st: &ServerState, name: &str, uri: &Uri) -> Response {
    match st.reg.tag_list() {
        Ok(all) => {
            let mut tags: Vec<String> = all
                .iter()
                .filter_map(|(t, _)| {
                    t.rsplit_once(':')
                        .filter(|(n, _)| *n == name)
                        .map(|(_, t)| t.to_string())
                })
                .collect();
            if tags.is_empty() {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    ErrorCode::NameUnknown,
                    &format!("repository {name} is not known"),
                );
            }
            tags.sort();
            let (page, link) = paginate(tags, uri, &format!("/v2/{name}/tags/list"));
            with_link(
                axum::Json(serde_json::json!({"name": name, "tags": page})).into_response(),
                link,
            )
        }
        Err(e) => internal(e),
    }
}

#[allow(clippy::result_large_err)] // the error is the ready response
fn manifest_digest(
    st: &ServerState,
    name: &str,
    reference: &str,
) -> Result<Option<Digest>, Response> {
    if reference.starts_with("sha256:") {
        let d: Digest = reference.parse().map_err(|_| {
            oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                "invalid digest",
            )
        })?;
        let known = st.reg.knows_manifest(&d).map_err(internal)?
            && st.reg.repo_has_blob(name, &d).map_err(internal)?;
        return if known {
            Ok(Some(d))
        } else {
            attached::find(st, name, reference)
        };
    }
    if !valid_tag(reference) {
        return Err(oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::TagInvalid,
            "invalid tag",
        ));
    }
    match st.reg.tag_target(&format!("{name}:{reference}")) {
        Ok(Some(d)) => Ok(Some(d)),
        Ok(None) => attached::find(st, name, reference),
        Err(e) => Err(internal(e)),
    }
}

/// DELETE of a manifest (what `skopeo delete`, `oras manifest delete` and `crane delete`
/// send): by tag, that tag of repository `name`; by digest, every tag of `name` that
/// points to it. As with `vmt-hub rm`, the blobs stay until `gc` frees them (after the
/// tag history's grace period). 202 when something was untagged, 404 otherwise.
fn delete_manifest(st: &ServerState, name: &str, reference: &str) -> Response {
    match attached::find(st, name, reference) {
        Ok(Some(d)) => return attached::delete_attached(st, name, &d),
        Ok(None) => {}
        Err(r) => return r,
    }
    let tags: Vec<String> = if reference.starts_with("sha256:") {
        let Ok(d) = reference.parse::<Digest>() else {
            return oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                "invalid digest",
            );
        };
        let in_repo = |t: &String| t.rsplit_once(':').is_some_and(|(n, _)| n == name);
        match st.reg.tags_of(&d) {
            Ok(tags) => tags.into_iter().filter(in_repo).collect(),
            Err(e) => return internal(e),
        }
    } else {
        match manifest_digest(st, name, reference) {
            Ok(Some(_)) => vec![format!("{name}:{reference}")],
            Ok(None) => Vec::new(),
            Err(r) => return r,
        }
    };
    if tags.is_empty() {
        return oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            &format!("{name}:{reference} is not known"),
        );
    }
    for t in &tags {
        if let Err(e) = st.reg.remove(t) {
            return internal(e);
        }
        tracing::info!("deleted tag {t}");
    }
    StatusCode::ACCEPTED.into_response()
}

fn get_manifest(st: &ServerState, name: &str, reference: &str, head: bool) -> Response {
    let d = match manifest_digest(st, name, reference) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return oci_error(
                StatusCode::NOT_FOUND,
                ErrorCode::ManifestUnknown,
                &format!("{name}:{reference} is not known"),
            )
        }
        Err(r) => return r,
    };
    match st.reg.blob(&d, "manifest") {
        Ok(bytes) => {
            let len = bytes.len().to_string();
            // A bundle's, or an attached artifact's own (OCI or Docker).
            let media_type = ArtifactManifest::parse(&bytes)
                .map_or_else(|_| MANIFEST_MEDIA_TYPE.to_string(), |m| m.media_type);
            let headers = [
                ("Content-Type", media_type),
                ("Docker-Content-Digest", d.to_string()),
                ("Content-Length", len),
            ];
            if head {
                (StatusCode::OK, headers).into_response()
            } else {
                (StatusCode::OK, headers, bytes).into_response()
            }
        }
        Err(e) => internal(e),
    }
}

fn manifest_invalid(reason: impl std::fmt::Display) -> Response {
    oci_error(
        StatusCode::BAD_REQUEST,
        ErrorCode::ManifestInvalid,
        &reason.to_string(),
    )
}

/// Validates the whole bundle a manifest describes, from blobs already uploaded: the
/// same checks as `export` and `pull`. Nothing is stored unless all pass.
#[allow(clippy::result_large_err)] // the error is the ready response
fn validate_pushed(
    st: &ServerState,
    name: &str,
    body: &[u8],
) -> Result<crate::bundle::BundleConfig, Response> {
    let manifest = Manifest::parse(body).map_err(manifest_invalid)?;
    check_manifest(&manifest, "manifest").map_err(manifest_invalid)?;
    for desc in manifest.blobs() {
        let in_repo = st.reg.repo_has_blob(name, &desc.digest).map_err(internal)?;
        if !in_repo || st.reg.blob_store().size(&desc.digest) != Some(desc.size) {
            return Err(oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestBlobUnknown,
                &format!(
                    "blob {} of {} bytes is not uploaded to {name}",
                    desc.digest, desc.size
                ),
            ));
        }
    }
    let config = st
        .reg
        .blob(&manifest.config.digest, "config")
        .map_err(manifest_invalid)
        .and_then(|b| parse_config(&b, Path::new("config")).map_err(manifest_invalid))?;
    check_layers(&manifest, &config, "manifest").map_err(manifest_invalid)?;
    for layer in &manifest.layers {
        let title = layer.title().unwrap_or("?");
        let bytes = st
            .reg
            .blob(&layer.digest, title)
            .map_err(manifest_invalid)?;
        check_component(&config, title, &bytes, "manifest").map_err(manifest_invalid)?;
    }
    Ok(config)
}

fn put_manifest(st: &ServerState, name: &str, reference: &str, body: &[u8]) -> Response {
    let d = Digest::of(body);
    let tag = if reference.starts_with("sha256:") {
        if reference != d.to_string() {
            return oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                "the manifest does not match the digest in the URL",
            );
        }
        None
    } else if valid_tag(reference) {
        match TagName::parse(&format!("{name}:{reference}")) {
            Ok(t) => Some(t),
            Err(e) => {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::TagInvalid,
                    &e.to_string(),
                )
            }
        }
    } else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::TagInvalid,
            "invalid tag",
        );
    };
    if let Err(not_bundle) = Manifest::parse(body) {
        return attached::put_attached(st, name, reference, body, &not_bundle);
    }
    let config = match validate_pushed(st, name, body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let stored = st.reg.store_manifest(body, tag.as_ref(), &config);
    // Pushed by digest (untagged), the manifest still belongs to this repository.
    match stored.and_then(|_| st.reg.note_repo_blob(name, &d)) {
        Ok(_) => (
            StatusCode::CREATED,
            [
                ("Location", format!("/v2/{name}/manifests/{d}")),
                ("Docker-Content-Digest", d.to_string()),
            ],
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// Deletes upload sessions idle for longer than the TTL.
fn expire_uploads(st: &ServerState) {
    let ttl = st.opts.upload_ttl;
    let mut uploads = st.uploads.lock().expect("lock");
    uploads.retain(|id, u| {
        let keep = u.busy || u.touched.elapsed() < ttl;
        if !keep {
            tracing::info!("upload {id} expired");
            let _ = std::fs::remove_file(&u.path);
        }
        keep
    });
}

#[allow(clippy::result_large_err)] // the error is the ready response
fn new_upload(st: &ServerState) -> Result<String, Response> {
    expire_uploads(st);
    let mut uploads = st.uploads.lock().expect("lock");
    if uploads.len() >= st.opts.max_uploads {
        return Err(oci_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many upload sessions are open; finish or cancel one, or try later",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let path = st.uploads_dir.join(&id);
    std::fs::File::create(&path).map_err(internal)?;
    uploads.insert(
        id.clone(),
        Upload {
            path,
            size: 0,
            touched: Instant::now(),
            busy: false,
        },
    );
    Ok(id)
}

fn upload_headers(name: &str, id: &str, size: u64) -> [(&'static str, String); 3] {
    [
        ("Location", format!("/v2/{name}/blobs/uploads/{id}")),
        ("Range", format!("0-{}", size.saturating_sub(1))),
        ("Docker-Upload-UUID", id.to_string()),
    ]
}

/// Moves a received file into the store as blob `digest` (hashing it first).
async fn store_file(st: &Shared, name: &str, digest: &str, file: PathBuf) -> Response {
    let Ok(want) = digest.parse::<Digest>() else {
        let _ = std::fs::remove_file(&file);
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "invalid digest",
        );
    };
    let st = Arc::clone(st);
    let name = name.to_string();
    blocking(move || {
        let stored = st.reg.blob_store().put_file(&file, &want);
        let _ = std::fs::remove_file(&file);
        match stored {
            Ok(_) => {
                st.verified.lock().expect("lock").remove(&want);
                if let Err(e) = note_in_repo(&st, &name, &want) {
                    return e;
                }
                (
                    StatusCode::CREATED,
                    [
                        ("Location", format!("/v2/{name}/blobs/{want}")),
                        ("Docker-Content-Digest", want.to_string()),
                    ],
                )
                    .into_response()
            }
            Err(crate::Error::DigestMismatch { .. }) => oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                &format!("the uploaded bytes do not match {want}"),
            ),
            Err(e) => internal(e),
        }
    })
    .await
}

async fn start_upload(st: &Shared, name: &str, uri: &Uri, body: Body) -> Response {
    if let Some(d) = query(uri, "mount") {
        if let Ok(d) = d.parse::<Digest>() {
            // A mount needs the repository it comes from to hold the blob (else: a
            // plain upload session, as the spec says).
            let from = query(uri, "from").unwrap_or_default();
            if valid_repo_name(&from)
                && blob_intact(st, d).await == Some(true)
                && mount(st, &from, name, d).await
            {
                return (
                    StatusCode::CREATED,
                    [
                        ("Location", format!("/v2/{name}/blobs/{d}")),
                        ("Docker-Content-Digest", d.to_string()),
                    ],
                )
                    .into_response();
            }
        }
    }
    if let Some(d) = query(uri, "digest") {
        // A monolithic upload: the body is the whole blob.
        let tmp = st
            .uploads_dir
            .join(format!("mono-{}", uuid::Uuid::new_v4()));
        let limit = st.opts.max_blob.min(st.opts.max_body as u64);
        if let Err(r) = stream_body(st, body, &tmp, limit).await {
            let _ = std::fs::remove_file(&tmp);
            return r;
        }
        return store_file(st, name, &d, tmp).await;
    }
    match new_upload(st) {
        Ok(id) => (StatusCode::ACCEPTED, upload_headers(name, &id, 0)).into_response(),
        Err(r) => r,
    }
}

/// Claims an upload session for one request: its file and size.
#[allow(clippy::result_large_err)] // the error is the ready response
fn claim(st: &ServerState, id: &str) -> Result<(PathBuf, u64), Response> {
    let mut uploads = st.uploads.lock().expect("lock");
    match uploads.get_mut(id) {
        None => Err(oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            "unknown upload",
        )),
        Some(u) if u.busy => Err(oci_error(
            StatusCode::CONFLICT,
            ErrorCode::BlobUploadInvalid,
            "another request is writing to this upload",
        )),
        Some(u) => {
            u.busy = true;
            Ok((u.path.clone(), u.size))
        }
    }
}

/// Releases a session after a request, at the size its file now has.
fn release(st: &ServerState, id: &str, size: u64) {
    if let Some(u) = st.uploads.lock().expect("lock").get_mut(id) {
        u.busy = false;
        u.size = size;
        u.touched = Instant::now();
    }
}

/// `Content-Range: <start>-<end>`.
fn content_range(headers: &HeaderMap) -> Option<Option<(u64, u64)>> {
    parse_content_range(headers.get("Content-Range")?.to_str().ok()?)
}

/// `[bytes ]<start>-<end>[/<total>]`: None when absent or not a range at all, `Some(None)`
/// when the numbers do not parse.
pub(crate) fn parse_content_range(v: &str) -> Option<Option<(u64, u64)>> {
    let v = v
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let (a, b) = v.split_once('-')?;
    Some(a.parse().ok().zip(b.split('/').next()?.parse().ok()))
}

/// Appends a request body to an upload session. A `Content-Range` must start where
/// the session ends and end where the body does.
async fn append(
    st: &Shared,
    id: &str,
    headers: Option<&HeaderMap>,
    body: Body,
) -> Result<u64, Response> {
    let (path, size) = claim(st, id)?;
    let range = headers.and_then(content_range);
    let refuse = |msg: String| {
        oci_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            &msg,
        )
    };
    let result = async {
        let expected_len = match range {
            None => None,
            Some(None) => return Err(refuse("malformed Content-Range".into())),
            Some(Some((start, end))) => {
                if start != size || end < start {
                    return Err(refuse(format!("expected a chunk starting at {size}")));
                }
                Some(end - start + 1)
            }
        };
        let room = st.opts.max_blob.saturating_sub(size);
        let limit = room.min(st.opts.max_body as u64);
        let written = match stream_body(st, body, &path, limit).await {
            Ok(n) => n,
            Err(r) => {
                truncate(&path, size);
                return Err(r);
            }
        };
        if expected_len.is_some_and(|n| n != written) {
            truncate(&path, size);
            return Err(refuse(format!(
                "Content-Range announced {} bytes, the body had {written}",
                expected_len.unwrap_or(0)
            )));
        }
        Ok(size + written)
    }
    .await;
    release(st, id, *result.as_ref().unwrap_or(&size));
    result
}

/// Cuts a session's file back to `size` bytes (a refused chunk leaves no trace).
fn truncate(path: &Path, size: u64) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_len(size);
    }
}

fn upload_status(st: &ServerState, name: &str, id: &str) -> Response {
    match st.uploads.lock().expect("lock").get(id) {
        Some(u) => (StatusCode::NO_CONTENT, upload_headers(name, id, u.size)).into_response(),
        None => oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            "unknown upload",
        ),
    }
}

async fn finish_upload(st: &Shared, name: &str, id: &str, uri: &Uri, body: Body) -> Response {
    let Some(d) = query(uri, "digest") else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "the final PUT needs ?digest=",
        );
    };
    if let Err(r) = append(st, id, None, body).await {
        return r;
    }
    let Some(u) = st.uploads.lock().expect("lock").remove(id) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            "unknown upload",
        );
    };
    store_file(st, name, &d, u.path).await
}

/// Whether repository `name` holds blob `d` (see `Registry::repo_has_blob`), asked with
/// the index held; false when the index cannot be had.
async fn in_repo(st: &Shared, name: &str, d: Digest) -> bool {
    let name = name.to_string();
    let answer = with_index(Arc::clone(st), move |st| {
        match st.reg.repo_has_blob(&name, &d) {
            Ok(true) => StatusCode::OK.into_response(),
            Ok(false) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => internal(e),
        }
    })
    .await;
    answer.status() == StatusCode::OK
}

/// Mounts blob `d` from repository `from` into `name` if `from` holds it.
async fn mount(st: &Shared, from: &str, name: &str, d: Digest) -> bool {
    let (from, name) = (from.to_string(), name.to_string());
    let answer = with_index(Arc::clone(st), move |st| {
        match st.reg.repo_has_blob(&from, &d) {
            Ok(true) => match st.reg.note_repo_blob(&name, &d) {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => internal(e),
            },
            Ok(false) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => internal(e),
        }
    })
    .await;
    answer.status() == StatusCode::OK
}

/// Notes an uploaded blob as repository `name`'s (blocking: called off the async
/// threads, takes the index for the moment it needs it).
#[allow(clippy::result_large_err)] // the error is the ready response
fn note_in_repo(st: &ServerState, name: &str, d: &Digest) -> Result<(), Response> {
    let hold = st.reg.hold_index().map_err(|e| {
        tracing::warn!("{e}");
        oci_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the registry is busy with another vmt-hub process; try again",
        )
    })?;
    let noted = st.reg.note_repo_blob(name, d).map_err(internal);
    drop(hold);
    noted
}

/// Whether blob `d` is present and hashes to its digest (cached by size and mtime);
/// None when absent. A corrupt blob is logged.
async fn blob_intact(st: &Shared, d: Digest) -> Option<bool> {
    let path = st.reg.blob_store().path(&d);
    let meta = std::fs::metadata(&path).ok()?;
    let stamp = (meta.len(), meta.modified().ok()?);
    if st.verified.lock().expect("lock").get(&d) == Some(&stamp) {
        return Some(true);
    }
    let st2 = Arc::clone(st);
    let ok = tokio::task::spawn_blocking(move || Digest::of_file(&path).ok() == Some(d))
        .await
        .unwrap_or(false);
    if ok {
        st2.verified.lock().expect("lock").insert(d, stamp);
    } else {
        tracing::error!(
            "blob {d} no longer hashes to its digest; answering 404 so that a push replaces it"
        );
    }
    Some(ok)
}

/// Whether an `Authorization` header carries `token`: `Bearer <token>`, or `Basic` with
/// the token as the password (any user name). Compared in constant time.
pub(crate) fn authorized(given: Option<&str>, token: &str) -> bool {
    use base64::Engine;
    let Some(given) = given else {
        return false;
    };
    let presented = if let Some(b) = given.strip_prefix("Bearer ") {
        b.trim().as_bytes().to_vec()
    } else if let Some(b) = given.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        match decoded.iter().position(|&c| c == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    let want = token.as_bytes();
    presented.len() == want.len()
        && presented
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A single `bytes=` range of a blob of `size` bytes as `(first, last)`, `Err(())` when it
/// cannot be satisfied; `None` (the whole blob) for no header, several ranges or another
/// unit.
#[allow(clippy::result_unit_err)]
pub(crate) fn blob_range(header: Option<&str>, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            if n == 0 || size == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, _) => {
            let first: u64 = a.parse().ok()?;
            let last: u64 = if b.is_empty() {
                u64::MAX
            } else {
                b.parse().ok()?
            };
            if first >= size || last < first {
                return Some(Err(()));
            }
            (first, last.min(size - 1))
        }
        (true, true) => return None,
    };
    Some(Ok(range))
}

/// `len` bytes of `file` from where it stands, streamed in 64 KiB reads.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let stream = futures_util::stream::try_unfold((file, len), |(mut f, left)| async move {
        if left == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        let mut buf = vec![0u8; (64 << 10).min(left as usize)];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((axum::body::Bytes::from(buf), (f, left - n as u64))))
    });
    Body::from_stream(stream)
}

async fn get_blob(
    st: &Shared,
    name: &str,
    digest: &str,
    head: bool,
    range: Option<&str>,
) -> Response {
    let Ok(d) = digest.parse::<Digest>() else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "invalid digest",
        );
    };
    if !in_repo(st, name, d).await || blob_intact(st, d).await != Some(true) {
        return oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            &format!("blob {d} is not known"),
        );
    }
    let path = st.reg.blob_store().path(&d);
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            &format!("blob {d} is not known"),
        );
    };
    let mut file = file;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let (status, first, len, content_range) = match blob_range(range, size) {
        None => (StatusCode::OK, 0, size, None),
        Some(Ok((a, b))) => (
            StatusCode::PARTIAL_CONTENT,
            a,
            b - a + 1,
            Some(format!("bytes {a}-{b}/{size}")),
        ),
        Some(Err(())) => {
            let mut r = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUnknown,
                &format!("the range is outside the blob's {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert("Content-Range", v);
            }
            return r;
        }
    };
    let mut headers = vec![
        ("Content-Type", "application/octet-stream".to_string()),
        ("Docker-Content-Digest", d.to_string()),
        ("Content-Length", len.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    if let Some(cr) = content_range {
        headers.push(("Content-Range", cr));
    }
    let mut response = if head {
        (status, Body::empty()).into_response()
    } else {
        if first > 0 && file.seek(std::io::SeekFrom::Start(first)).await.is_err() {
            return internal("seek");
        }
        (status, file_body(file, len)).into_response()
    };
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}
