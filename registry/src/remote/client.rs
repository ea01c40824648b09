//! An OCI Distribution HTTP client: authentication (basic, static bearer token, and the
//! token flow a registry announces in `WWW-Authenticate`), retries with backoff on 5xx
//! and connection errors, and OCI error bodies turned into messages.
//!
//! Every wait on the peer is bounded on its own (ureq 3's per-phase timeouts):
//! connecting by [`Timeouts::connect`]; every read and every write by
//! [`Timeouts::read`]; the response headers must all arrive within [`Timeouts::read`]
//! (a server that trickles its headers is cut there); a request body must go at
//! [`Timeouts::min_rate`] on average; a response body is read through [`Paced`], which
//! ends a transfer slower than `min_rate` over any window of [`Timeouts::read`]; and
//! the whole operation, retries included, by [`Timeouts::total`]. A timeout is retried
//! once, a refused connection or a 5xx up to [`Client::retries`] times; each retry is
//! logged at `warn` with the host and the reason.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use base64::Engine;
use ureq::RequestExt as _;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{parse_error_body, ErrorCode};

/// How long a remote operation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to the host.
    pub connect: Duration,
    /// Any single read or write (a server that stops answering); also the time the
    /// response headers may take, and the window over which `min_rate` is measured.
    pub read: Duration,
    /// The whole operation (a push or a pull), retries included.
    pub total: Duration,
    /// The slowest transfer accepted, in bytes per second, averaged over each window
    /// of `read` (curl's `--speed-limit` over `--speed-time`); 0 accepts any rate.
    pub min_rate: u64,
}

impl Default for Timeouts {
    /// 10 s to connect, 30 s for any read or write, 1 KiB/s at least, 30 minutes in all.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            total: Duration::from_secs(30 * 60),
            min_rate: 1024,
        }
    }
}

/// Text from a remote made safe to print: control characters (ANSI escapes among
/// them) are shown escaped, and the length is bounded.
pub fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(300) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Retries spent on one request.
#[derive(Default)]
struct Tries {
    /// Retries of any kind so far.
    attempt: u32,
    /// Of which after a timeout.
    timeouts: u32,
}

/// Credentials for a remote. Never printed: `Debug` redacts them.
#[derive(Clone, Default)]
pub struct Credentials {
    /// User name for basic auth (and the token flow).
    pub user: Option<String>,
    /// Password for basic auth.
    pub password: Option<String>,
    /// A bearer token used as is (`VMT_REGISTRY_TOKEN`).
    pub token: Option<String>,
    /// Where they came from (a credentials file, a helper), said when they are refused.
    pub source: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .finish()
    }
}

/// A reader that fails when fewer than `min_rate` bytes per second arrive over a
/// window (curl's `--speed-limit`/`--speed-time`): each read is already bounded by the
/// transport's read timeout, so a server that trickles a byte now and then is cut
/// after one window.
pub struct Paced<R> {
    inner: R,
    min_bytes: u64,
    window: Duration,
    started: Instant,
    got: u64,
}

impl<R: Read> Paced<R> {
    /// `inner`, required to deliver `min_rate` bytes per second over each `window`.
    pub fn new(inner: R, min_rate: u64, window: Duration) -> Self {
        Self {
            inner,
            min_bytes: (min_rate as f64 * window.as_secs_f64()) as u64,
            window,
            started: Instant::now(),
            got: 0,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got += n as u64;
        if n > 0 && self.started.elapsed() >= self.window {
            if self.got < self.min_bytes {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} byte(s) in {:.0} s, below the minimum rate of {} bytes/s \
                         (--min-rate)",
                        self.got,
                        self.started.elapsed().as_secs_f64(),
                        self.min_bytes as f64 / self.window.as_secs_f64()
                    ),
                ));
            }
            self.started = Instant::now();
            self.got = 0;
        }
        Ok(n)
    }
}

/// A response: status, headers, and the body reader.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The response, for headers and body.
    pub response: ureq::http::Response<ureq::Body>,
    timeouts: Timeouts,
}

impl Reply {
    /// A response header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// The body, paced (see [`Paced`]).
    fn reader(self) -> Paced<ureq::BodyReader<'static>> {
        let t = self.timeouts;
        Paced::new(self.response.into_body().into_reader(), t.min_rate, t.read)
    }

    /// The body, refusing more than `limit` bytes.
    pub fn body(self, limit: u64, what: &str, remote: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let t = self.timeouts;
        self.reader()
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::remote(remote, None, format!("reading {what}: {}", io_text(&e, &t)))
            })?;
        if out.len() as u64 > limit {
            return Err(Error::Oversized {
                remote: remote.into(),
                what: what.into(),
                limit,
            });
        }
        Ok(out)
    }

    /// Streams the body into `out`, hashing it, refusing more than `limit` bytes
    /// (memory stays constant whatever the server sends). Returns size and digest.
    pub fn copy_to(
        self,
        out: &mut impl Write,
        limit: u64,
        what: &str,
        remote: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, Digest)> {
        let t = self.timeouts;
        let mut reader = self.reader().take(limit + 1);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                Error::remote(remote, None, format!("reading {what}: {}", io_text(&e, &t)))
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                return Err(Error::Oversized {
                    remote: remote.into(),
                    what: what.into(),
                    limit,
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::remote(remote, None, format!("storing {what}: {e}")))?;
            progress(n as u64);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        Ok((total, Digest::from_bytes(digest)))
    }

    /// Up to `limit` bytes of the body as text, for an error message (errors ignored).
    fn text(self, limit: u64) -> String {
        let mut body = String::new();
        let _ = self.reader().take(limit).read_to_string(&mut body);
        body
    }
}

/// What a ureq error means, in the words of our flags.
fn describe(e: &ureq::Error, t: &Timeouts) -> String {
    use ureq::Timeout as T;
    let secs = |d: Duration| d.as_secs_f64();
    match e {
        ureq::Error::Timeout(T::PerRead) => {
            format!("no byte for {} s (--read-timeout)", secs(t.read))
        }
        ureq::Error::Timeout(T::PerWrite) => {
            format!("could not send for {} s (--read-timeout)", secs(t.read))
        }
        ureq::Error::Timeout(T::RecvResponse) => format!(
            "the response headers did not arrive within {} s (--read-timeout)",
            secs(t.read)
        ),
        ureq::Error::Timeout(T::SendBody) => format!(
            "the request body went slower than {} bytes/s (--min-rate)",
            t.min_rate
        ),
        ureq::Error::Timeout(T::Connect | T::Resolve) => {
            format!("could not connect within {} s", secs(t.connect))
        }
        ureq::Error::Timeout(_) => format!(
            "not finished within the {} s deadline (--timeout)",
            secs(t.total)
        ),
        ureq::Error::Io(io) => io_text(io, t),
        other => sanitize(&other.to_string()),
    }
}

/// An I/O error from a body reader, with a ureq error inside described as such.
fn io_text(e: &std::io::Error, t: &Timeouts) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        Some(inner) => describe(inner, t),
        None => sanitize(&e.to_string()),
    }
}

/// The default size of a push's PATCH chunks: 8 MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// An OCI Distribution client for one registry, with one operation deadline.
pub struct Client {
    agent: ureq::Agent,
    /// `http(s)://host:port`.
    pub base: String,
    creds: Credentials,
    /// A token obtained from the registry's token endpoint.
    bearer: Mutex<Option<String>>,
    /// Retries on 5xx and connection errors (a timeout is retried once).
    pub retries: u32,
    /// Blobs larger than this are pushed in PATCH chunks of this size
    /// ([`DEFAULT_CHUNK_BYTES`]).
    pub chunk_size: usize,
    timeouts: Timeouts,
    /// When the whole operation must have finished.
    deadline: Instant,
}

/// `Bearer realm="...",service="...",scope="..."` -> (scheme, params).
pub(crate) fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let v = v.trim_start();
        let (value, remaining) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (v[..end].to_string(), &v[end..]),
                None => (v.to_string(), ""),
            }
        };
        params.push((k, value));
        rest = remaining.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The message of an OCI error body (`{"errors": [{"code", "message"}]}`), if any.
fn oci_error(body: &str) -> Option<String> {
    let errors = parse_error_body(body)?;
    let text: Vec<String> = errors
        .iter()
        .map(|(_, code, message)| format!("{code}: {message}"))
        .collect();
    Some(text.join("; "))
}

/// The first known code of an error body.
fn oci_code(body: &str) -> Option<ErrorCode> {
    parse_error_body(body)?
        .into_iter()
        .find_map(|(code, _, _)| code)
}

impl Client {
    /// A client with the default [`Timeouts`].
    pub fn new(base: &str, creds: Credentials) -> Self {
        Self::with_timeouts(base, creds, Timeouts::default())
    }

    /// A client whose operation must finish within `timeouts.total` from now.
    pub fn with_timeouts(base: &str, creds: Credentials, timeouts: Timeouts) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeouts.connect))
            .timeout_per_read(Some(timeouts.read))
            .timeout_per_write(Some(timeouts.read))
            .timeout_recv_response(Some(timeouts.read))
            .user_agent(concat!("vmt-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Self {
            agent,
            base: base.into(),
            creds,
            bearer: Mutex::new(None),
            retries: 3,
            chunk_size: DEFAULT_CHUNK_BYTES,
            timeouts,
            deadline: Instant::now() + timeouts.total,
        }
    }

    /// Time left before the operation's deadline, or the error that says it passed.
    fn remaining(&self, what: &str) -> Result<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::remote(
                    &self.base,
                    None,
                    format!(
                        "{what}: not finished within the {} s deadline (--timeout)",
                        self.timeouts.total.as_secs_f64()
                    ),
                )
            })
    }

    /// Absolute URL for a path or a (possibly relative) Location header.
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.into()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    fn auth_header(&self) -> Option<String> {
        if let Some(t) = self.bearer.lock().expect("lock").clone() {
            return Some(format!("Bearer {t}"));
        }
        if let Some(t) = &self.creds.token {
            return Some(format!("Bearer {t}"));
        }
        self.basic()
    }

    fn basic(&self) -> Option<String> {
        let user = self.creds.user.as_ref()?;
        let pass = self.creds.password.clone().unwrap_or_default();
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// One HTTP exchange, bounded as the module says; statuses are not errors here.
    fn exchange(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        auth: Option<&str>,
        what: &str,
    ) -> Result<std::result::Result<Reply, ureq::Error>> {
        let remaining = self.remaining(what)?;
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            // ureq writes Content-Length from the body itself.
            if !k.eq_ignore_ascii_case("content-length") {
                req = req.header(*k, *v);
            }
        }
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let invalid = |e: ureq::http::Error| {
            Error::remote(&self.base, None, format!("{what}: invalid request: {e}"))
        };
        // A body must go at min_rate on average: its own budget on top of one read timeout.
        let send_budget = |len: usize| {
            let rate = self.timeouts.min_rate.max(1) as f64;
            let secs = if self.timeouts.min_rate == 0 {
                1e9
            } else {
                len as f64 / rate
            };
            self.timeouts.read + Duration::from_secs_f64(secs.min(1e9))
        };
        let result = match body {
            Some(b) => req
                .body(b)
                .map_err(invalid)?
                .with_agent(&self.agent)
                .configure()
                .timeout_global(Some(remaining))
                .timeout_send_body(Some(send_budget(b.len())))
                .run(),
            None => req
                .body(())
                .map_err(invalid)?
                .with_agent(&self.agent)
                .configure()
                .timeout_global(Some(remaining))
                .run(),
        };
        Ok(result.map(|response| Reply {
            status: response.status().as_u16(),
            response,
            timeouts: self.timeouts,
        }))
    }

    /// Answers a `Bearer` challenge by asking the realm for a token.
    fn fetch_token(&self, params: &[(String, String)]) -> Result<String> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let auth_err = |reason: String| Error::Auth {
            remote: self.base.clone(),
            reason,
        };
        let realm =
            get("realm").ok_or_else(|| auth_err("the Bearer challenge has no realm".into()))?;
        if !realm.starts_with("http://") && !realm.starts_with("https://") {
            return Err(auth_err(
                "the registry wants a bearer token and offers no token service: set VMT_REGISTRY_TOKEN".into(),
            ));
        }
        let mut url = realm.clone();
        for k in ["service", "scope"] {
            if let Some(v) = get(k) {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&format!("{k}={}", query_escape(&v)));
            }
        }
        let basic = self.basic();
        let reply =
            match self.exchange("GET", &url, &[], None, basic.as_deref(), "token request")? {
                Ok(r) => r,
                Err(e) => {
                    return Err(auth_err(format!(
                        "cannot reach the token service {}: {}",
                        sanitize(&realm),
                        describe(&e, &self.timeouts)
                    )))
                }
            };
        if !(200..300).contains(&reply.status) {
            return Err(auth_err(format!(
                "the token service {} answered HTTP {} (wrong user or password?)",
                sanitize(&realm),
                reply.status
            )));
        }
        let text = reply
            .body(1 << 20, "token reply", &self.base)
            .map_err(|e| auth_err(format!("token reply: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| auth_err(format!("token reply: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| auth_err("the token reply has no token".into()))
    }

    /// Sends a request (with a body if given), authenticating and retrying as needed.
    /// 2xx and 3xx come back as replies; other statuses are errors naming `what`.
    ///
    /// # Errors
    /// [`Error::Auth`] for 401/403, [`Error::Remote`] with the status for other
    /// refusals, and [`Error::Remote`] naming the host and the bound that was hit
    /// (`--read-timeout`, `--min-rate`, `--timeout`) for a peer that stalls.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<Reply> {
        let mut authed_after_challenge = false;
        let mut tries = Tries::default();
        let url = self.url(url);
        loop {
            let auth = self.auth_header();
            let reply = match self.exchange(method, &url, headers, body, auth.as_deref(), what)? {
                Ok(r) => r,
                Err(e) => {
                    self.retry_after(&e, what, &mut tries)?;
                    continue;
                }
            };
            match reply.status {
                200..=399 => return Ok(reply),
                401 if !authed_after_challenge => {
                    authed_after_challenge = true;
                    self.answer_challenge(reply, what)?;
                }
                code @ (401 | 403) => {
                    let detail = oci_error(&reply.text(64 << 10)).unwrap_or_default();
                    return Err(Error::Auth {
                        remote: self.base.clone(),
                        reason: format!("{what}: HTTP {code} {}", sanitize(&detail))
                            .trim()
                            .to_string(),
                    });
                }
                code if code >= 500 && tries.attempt < self.retries => {
                    drop(reply);
                    tries.attempt += 1;
                    let attempt = tries.attempt;
                    tracing::warn!("{}: {what}: HTTP {code}; retrying ({attempt})", self.base);
                    std::thread::sleep(backoff(attempt).min(self.remaining(what)?));
                }
                code => {
                    let body = reply.text(64 << 10);
                    let oci = oci_code(&body);
                    let detail = oci_error(&body).unwrap_or(body);
                    let reason = format!("{what}: HTTP {code} {}", sanitize(&detail));
                    return Err(Error::Remote {
                        remote: self.base.clone(),
                        status: Some(code),
                        code: oci,
                        reason: reason.trim().to_string(),
                    });
                }
            }
        }
    }

    /// After a transport error: waits and returns `Ok` when a second try may work (a
    /// refused, reset or garbled connection, within the retries; a timeout once), else
    /// the error naming the host and the bound that was hit.
    fn retry_after(&self, e: &ureq::Error, what: &str, tries: &mut Tries) -> Result<()> {
        let timed_out = matches!(e, ureq::Error::Timeout(_));
        let reason = describe(e, &self.timeouts);
        // An unknown host, a bad URL or a TLS failure will not work on a second try.
        let transient = matches!(
            e,
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_)
        );
        let retry = if timed_out {
            tries.timeouts < 1 && !matches!(e, ureq::Error::Timeout(ureq::Timeout::Global))
        } else {
            transient && tries.attempt < self.retries
        };
        if !retry {
            return Err(Error::remote(&self.base, None, format!("{what}: {reason}")));
        }
        if timed_out {
            tries.timeouts += 1;
        }
        tries.attempt += 1;
        let attempt = tries.attempt;
        tracing::warn!("{}: {what}: {reason}; retrying ({attempt})", self.base);
        std::thread::sleep(backoff(attempt).min(self.remaining(what)?));
        Ok(())
    }

    /// The first 401: fetches a bearer token when the challenge asks for one and none
    /// was given (`Ok`: send again); otherwise the refusal, saying whether credentials
    /// were rejected or missing.
    fn answer_challenge(&self, reply: Reply, what: &str) -> Result<()> {
        let challenge = reply.header("WWW-Authenticate").unwrap_or_default();
        drop(reply);
        let (scheme, params) = parse_challenge(&challenge);
        let has_bearer = self.bearer.lock().expect("lock").is_some();
        if scheme == "bearer" && self.creds.token.is_none() && !has_bearer {
            let token = self.fetch_token(&params)?;
            *self.bearer.lock().expect("lock") = Some(token);
            return Ok(());
        }
        let given = self.creds.token.is_some() || self.creds.user.is_some() || has_bearer;
        Err(Error::Auth {
            remote: self.base.clone(),
            reason: if given {
                let from = self.creds.source.as_deref().map(|s| format!(" (from {s})"));
                format!(
                    "{what}: HTTP 401, the credentials{} were rejected",
                    from.unwrap_or_default()
                )
            } else {
                format!("{what}: HTTP 401, credentials needed (--user with VMT_REGISTRY_PASSWORD, or VMT_REGISTRY_TOKEN)")
            },
        })
    }

    /// HEAD that reports existence (200) or absence (404) instead of an error.
    pub fn exists(&self, path: &str, what: &str) -> Result<bool> {
        match self.send("HEAD", path, &[], None, what) {
            Ok(_) => Ok(true),
            Err(Error::Remote {
                status: Some(404), ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn query_escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * 2u64.pow(attempt.min(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.io/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert_eq!(parse_challenge(r#"Basic realm="x""#).0, "basic");
    }

    #[test]
    fn credentials_are_redacted() {
        let c = Credentials {
            user: Some("me".into()),
            password: Some("hunter2".into()),
            token: Some("tok".into()),
            source: None,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok\"") && s.contains("me"));
    }
}
