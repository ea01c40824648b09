//! `vmt-hub serve`: the OCI Distribution API (the part push and pull use, plus tag
//! listing and the catalog) answered from a local registry.
//!
//! Blobs are shared by all repositories of the server (the store is content-addressed),
//! so a blob pushed under one name is found under every name. Request bodies are bounded,
//! repository names are checked against the OCI grammar (no `..`), every blob is checked
//! against its digest, and errors use the spec's codes.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::{valid_repo_name, valid_tag};
use crate::bundle::dir::parse_config;
use crate::digest::Digest;
use crate::oci::{Manifest, MANIFEST_MEDIA_TYPE};
use crate::reference::TagName;
use crate::store::Registry;

/// Default largest request body (one PUT or PATCH).
pub const MAX_BODY: usize = 256 << 20;
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 4 << 20;

struct Upload {
    path: PathBuf,
    size: u64,
}

pub struct ServerState {
    reg: Registry,
    uploads_dir: PathBuf,
    uploads: Mutex<HashMap<String, Upload>>,
    token: Option<String>,
    max_body: usize,
}

type Shared = Arc<ServerState>;

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string())
}

/// Builds the router over an open registry.
pub fn router(reg: Registry, token: Option<String>, max_body: usize) -> std::io::Result<Router> {
    let uploads_dir = reg.root().join("tmp").join("uploads");
    std::fs::create_dir_all(&uploads_dir)?;
    let state = Arc::new(ServerState {
        reg,
        uploads_dir,
        uploads: Mutex::new(HashMap::new()),
        token,
        max_body,
    });
    Ok(Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state))
}

/// Serves until the process is stopped.
/// Options of `vmt-hub serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub max_body: usize,
}

pub async fn serve(
    reg: Registry,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    ready(listener.local_addr()?);
    // Ctrl-C lets requests in flight finish; the index is flushed after every publish.
    axum::serve(listener, router(reg, opts.token, opts.max_body)?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// What a `/v2/...` path asks for.
enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    UploadStart(String),
    Upload(String, String),
    Blob(String, String),
}

fn route(path: &str) -> Option<Route> {
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
    None
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%3a", ":"))
    })
}

async fn handle(
    State(st): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(t) = &st.token {
        let ok = headers.get("Authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {t}"));
        if !ok {
            let mut r = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "a bearer token is required",
            );
            r.headers_mut().insert(
                "WWW-Authenticate",
                HeaderValue::from_static("Bearer realm=\"vmt-hub\",service=\"vmt-hub\""),
            );
            return r;
        }
    }
    let Some(route) = route(uri.path()) else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown endpoint");
    };
    let name_ok = |n: &str| valid_repo_name(n);
    let st2 = Arc::clone(&st);
    let result = tokio::task::spawn_blocking(move || {
        let st = st2;
        match route {
            Route::Base => (
                StatusCode::OK,
                [("Docker-Distribution-API-Version", "registry/2.0")],
                "{}",
            )
                .into_response(),
            Route::Catalog => catalog(&st),
            Route::Tags(n) if name_ok(&n) => tags(&st, &n),
            Route::Manifest(n, r) if name_ok(&n) => match method {
                Method::GET | Method::HEAD => get_manifest(&st, &n, &r, method == Method::HEAD),
                Method::PUT => put_manifest(&st, &n, &r, &body),
                _ => oci_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "method not allowed",
                ),
            },
            Route::UploadStart(n) if name_ok(&n) && method == Method::POST => {
                start_upload(&st, &n, &uri, &body)
            }
            Route::Upload(n, id) if name_ok(&n) => match method {
                Method::PATCH => patch_upload(&st, &n, &id, &headers, &body),
                Method::PUT => finish_upload(&st, &n, &id, &uri, &body),
                Method::GET => upload_status(&st, &n, &id),
                Method::DELETE => {
                    if let Some(u) = st.uploads.lock().expect("lock").remove(&id) {
                        let _ = std::fs::remove_file(u.path);
                    }
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => oci_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "method not allowed",
                ),
            },
            Route::Blob(n, d) if name_ok(&n) => match method {
                Method::GET | Method::HEAD => get_blob(&st, &d, method == Method::HEAD),
                _ => oci_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "method not allowed",
                ),
            },
            Route::UploadStart(_) if method != Method::POST => oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "method not allowed",
            ),
            _ => oci_error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "invalid repository name",
            ),
        }
    })
    .await;
    result.unwrap_or_else(internal)
}

fn catalog(st: &ServerState) -> Response {
    match st.reg.index.tags() {
        Ok(tags) => {
            let names: BTreeSet<String> = tags
                .iter()
                .filter_map(|(t, _)| t.rsplit_once(':').map(|(n, _)| n.to_string()))
                .collect();
            axum::Json(serde_json::json!({"repositories": names})).into_response()
        }
        Err(e) => internal(e),
    }
}

fn tags(st: &ServerState, name: &str) -> Response {
    match st.reg.index.tags() {
        Ok(all) => {
            let tags: Vec<String> = all
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
                    "NAME_UNKNOWN",
                    &format!("repository {name} is not known"),
                );
            }
            axum::Json(serde_json::json!({"name": name, "tags": tags})).into_response()
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
        let d: Digest = reference
            .parse()
            .map_err(|_| oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest"))?;
        return Ok(st.reg.index.manifest(&d).map_err(internal)?.map(|_| d));
    }
    if !valid_tag(reference) {
        return Err(oci_error(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            "invalid tag",
        ));
    }
    st.reg
        .index
        .tag(&format!("{name}:{reference}"))
        .map_err(internal)
}

fn get_manifest(st: &ServerState, name: &str, reference: &str, head: bool) -> Response {
    let d = match manifest_digest(st, name, reference) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("{name}:{reference} is not known"),
            )
        }
        Err(r) => return r,
    };
    match st.reg.blobs.get(&d, "manifest") {
        Ok(bytes) => {
            let len = bytes.len().to_string();
            let headers = [
                ("Content-Type", MANIFEST_MEDIA_TYPE.to_string()),
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

fn put_manifest(st: &ServerState, name: &str, reference: &str, body: &[u8]) -> Response {
    if body.len() > MAX_MANIFEST {
        return oci_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            "manifest too large",
        );
    }
    let d = Digest::of(body);
    let manifest = match Manifest::parse(body) {
        Ok(m) => m,
        Err(reason) => return oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", &reason),
    };
    for desc in manifest.blobs() {
        if st.reg.blobs.size(&desc.digest) != Some(desc.size) {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                &format!("blob {} is not uploaded", desc.digest),
            );
        }
    }
    let config = match st
        .reg
        .blobs
        .get(&manifest.config.digest, "config")
        .map_err(|e| e.to_string())
        .and_then(|b| parse_config(&b, std::path::Path::new("config")).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(reason) => return oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", &reason),
    };
    let tag = if reference.starts_with("sha256:") {
        if reference != d.to_string() {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "the manifest does not match the digest in the URL",
            );
        }
        None
    } else if valid_tag(reference) {
        match TagName::parse(&format!("{name}:{reference}")) {
            Ok(t) => Some(t),
            Err(e) => return oci_error(StatusCode::BAD_REQUEST, "TAG_INVALID", &e.to_string()),
        }
    } else {
        return oci_error(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag");
    };
    let stored = match &tag {
        Some(t) => st.reg.store_manifest(body, &[], t, &config).map(|_| ()),
        None => st.reg.store_untagged_manifest(body, &config),
    };
    match stored {
        Ok(()) => (
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

fn new_upload(st: &ServerState) -> std::io::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let path = st.uploads_dir.join(&id);
    std::fs::File::create(&path)?;
    st.uploads
        .lock()
        .expect("lock")
        .insert(id.clone(), Upload { path, size: 0 });
    Ok(id)
}

fn upload_headers(name: &str, id: &str, size: u64) -> [(&'static str, String); 3] {
    [
        ("Location", format!("/v2/{name}/blobs/uploads/{id}")),
        ("Range", format!("0-{}", size.saturating_sub(1))),
        ("Docker-Upload-UUID", id.to_string()),
    ]
}

/// Checks bytes against the digest a client names, then stores them.
fn store_blob(st: &ServerState, name: &str, digest: &str, bytes: &[u8]) -> Response {
    let Ok(want) = digest.parse::<Digest>() else {
        return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
    };
    if Digest::of(bytes) != want {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            &format!("the uploaded bytes do not match {want}"),
        );
    }
    match st.reg.blobs.put(bytes) {
        Ok(_) => (
            StatusCode::CREATED,
            [
                ("Location", format!("/v2/{name}/blobs/{want}")),
                ("Docker-Content-Digest", want.to_string()),
            ],
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

fn start_upload(st: &ServerState, name: &str, uri: &Uri, body: &[u8]) -> Response {
    if let Some(d) = query(uri, "mount") {
        if let Ok(d) = d.parse::<Digest>() {
            if st.reg.blobs.contains(&d) {
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
        return store_blob(st, name, &d, body);
    }
    match new_upload(st) {
        Ok(id) => (StatusCode::ACCEPTED, upload_headers(name, &id, 0)).into_response(),
        Err(e) => internal(e),
    }
}

#[allow(clippy::result_large_err)] // the error is the ready response
fn append(
    st: &ServerState,
    id: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<u64, Response> {
    let mut uploads = st.uploads.lock().expect("lock");
    let Some(u) = uploads.get_mut(id) else {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "unknown upload",
        ));
    };
    if let Some(range) = headers
        .and_then(|h| h.get("Content-Range"))
        .and_then(|v| v.to_str().ok())
    {
        let start = range
            .split_once('-')
            .and_then(|(a, _)| a.parse::<u64>().ok());
        if start != Some(u.size) {
            return Err(oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                &format!("expected a chunk starting at {}", u.size),
            ));
        }
    }
    if u.size + body.len() as u64 > st.max_body as u64 * 16 {
        return Err(oci_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            "blob too large",
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&u.path)
        .map_err(internal)?;
    f.write_all(body).map_err(internal)?;
    u.size += body.len() as u64;
    Ok(u.size)
}

fn patch_upload(
    st: &ServerState,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match append(st, id, Some(headers), body) {
        Ok(size) => (StatusCode::ACCEPTED, upload_headers(name, id, size)).into_response(),
        Err(r) => r,
    }
}

fn upload_status(st: &ServerState, name: &str, id: &str) -> Response {
    match st.uploads.lock().expect("lock").get(id) {
        Some(u) => (StatusCode::NO_CONTENT, upload_headers(name, id, u.size)).into_response(),
        None => oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "unknown upload",
        ),
    }
}

fn finish_upload(st: &ServerState, name: &str, id: &str, uri: &Uri, body: &[u8]) -> Response {
    if let Err(r) = append(st, id, None, body) {
        return r;
    }
    let Some(u) = st.uploads.lock().expect("lock").remove(id) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "unknown upload",
        );
    };
    let bytes = std::fs::read(&u.path);
    let _ = std::fs::remove_file(&u.path);
    let Some(d) = query(uri, "digest") else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the final PUT needs ?digest=",
        );
    };
    match bytes {
        Ok(b) => store_blob(st, name, &d, &b),
        Err(e) => internal(e),
    }
}

fn get_blob(st: &ServerState, digest: &str, head: bool) -> Response {
    let Ok(d) = digest.parse::<Digest>() else {
        return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
    };
    let Some(size) = st.reg.blobs.size(&d) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            &format!("blob {d} is not known"),
        );
    };
    let headers = [
        ("Content-Type", "application/octet-stream".to_string()),
        ("Docker-Content-Digest", d.to_string()),
        ("Content-Length", size.to_string()),
    ];
    if head {
        return (StatusCode::OK, headers).into_response();
    }
    match st.reg.blobs.get(&d, "blob") {
        Ok(bytes) => (StatusCode::OK, headers, bytes).into_response(),
        Err(e) => internal(e),
    }
}

/// Runs the server on its own tokio runtime until the process stops; `ready` gets the
/// bound address (useful with port 0).
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
