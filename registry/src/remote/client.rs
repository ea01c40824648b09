//! An OCI Distribution HTTP client: authentication (basic, static bearer token, and the
//! token flow a registry announces in `WWW-Authenticate`), retries with backoff on 5xx
//! and connection errors, and OCI error bodies turned into messages.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use base64::Engine;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// How long a remote operation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to the host.
    pub connect: Duration,
    /// Waiting for any byte (a server that stops answering).
    pub read: Duration,
    /// The whole operation (a push or a pull), retries included (a server that drips).
    pub total: Duration,
}

impl Default for Timeouts {
    /// 10 s to connect, 30 s between bytes, 30 minutes in all.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            total: Duration::from_secs(30 * 60),
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

/// Credentials for a remote. Never printed: `Debug` redacts them.
#[derive(Clone, Default)]
pub struct Credentials {
    /// User name for basic auth (and the token flow).
    pub user: Option<String>,
    /// Password for basic auth.
    pub password: Option<String>,
    /// A bearer token used as is (`VMT_REGISTRY_TOKEN`).
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A response: status, headers we need, and the body reader.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The response, for headers and body.
    pub response: ureq::Response,
}

impl Reply {
    /// A response header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.response.header(name).map(String::from)
    }

    /// The body, refusing more than `limit` bytes.
    pub fn body(self, limit: u64, what: &str, remote: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.response
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::remote(remote, None, format!("reading {what}: {e}")))?;
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
        let mut reader = self.response.into_reader().take(limit + 1);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| Error::remote(remote, None, format!("reading {what}: {e}")))?;
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
}

/// An OCI Distribution client for one registry, with one operation deadline.
pub struct Client {
    agent: ureq::Agent,
    /// `http(s)://host:port`.
    pub base: String,
    creds: Credentials,
    /// A token obtained from the registry's token endpoint.
    bearer: Mutex<Option<String>>,
    /// Retries on 5xx and connection errors.
    pub retries: u32,
    timeouts: Timeouts,
    /// When the whole operation must have finished.
    deadline: Instant,
}

/// `Bearer realm="...",service="...",scope="..."` -> (scheme, params).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
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
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let errs = v.get("errors")?.as_array()?;
    Some(
        errs.iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
                    e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

impl Client {
    /// A client with the default [`Timeouts`].
    pub fn new(base: &str, creds: Credentials) -> Self {
        Self::with_timeouts(base, creds, Timeouts::default())
    }

    /// A client whose operation must finish within `timeouts.total` from now.
    pub fn with_timeouts(base: &str, creds: Credentials, timeouts: Timeouts) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeouts.connect)
            .timeout_read(timeouts.read)
            .timeout_write(timeouts.read)
            .build();
        Self {
            agent,
            base: base.into(),
            creds,
            bearer: Mutex::new(None),
            retries: 3,
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

    /// Answers a `Bearer` challenge by asking the realm for a token.
    fn fetch_token(&self, params: &[(String, String)]) -> Result<String> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| Error::Auth {
            remote: self.base.clone(),
            reason: "the Bearer challenge has no realm".into(),
        })?;
        if !realm.starts_with("http://") && !realm.starts_with("https://") {
            return Err(Error::Auth {
                remote: self.base.clone(),
                reason: "the registry wants a bearer token and offers no token service: set VMT_REGISTRY_TOKEN".into(),
            });
        }
        let mut req = self
            .agent
            .get(&realm)
            .timeout(self.remaining("token request")?);
        for k in ["service", "scope"] {
            if let Some(v) = get(k) {
                req = req.query(k, &v);
            }
        }
        if let Some(b) = self.basic() {
            req = req.set("Authorization", &b);
        }
        let resp = req.call().map_err(|e| Error::Auth {
            remote: self.base.clone(),
            reason: match e {
                ureq::Error::Status(code, _) => format!(
                    "the token service {} answered HTTP {code} (wrong user or password?)",
                    sanitize(&realm)
                ),
                ureq::Error::Transport(t) => format!(
                    "cannot reach the token service {}: {}",
                    sanitize(&realm),
                    sanitize(&t.to_string())
                ),
            },
        })?;
        let mut text = String::new();
        let read = resp
            .into_reader()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map(|_| ());
        read.map_err(|e| Error::Auth {
            remote: self.base.clone(),
            reason: format!("token reply: {e}"),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Auth {
            remote: self.base.clone(),
            reason: format!("token reply: {e}"),
        })?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| Error::Auth {
                remote: self.base.clone(),
                reason: "the token reply has no token".into(),
            })
    }

    /// Sends a request (with a body if given), authenticating and retrying as needed.
    /// 2xx and 3xx come back as replies; other statuses are errors naming `what`.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<Reply> {
        let mut authed_after_challenge = false;
        let mut attempt = 0;
        loop {
            let mut req = self
                .agent
                .request(method, &self.url(url))
                .timeout(self.remaining(what)?);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.auth_header() {
                req = req.set("Authorization", &a);
            }
            let result = match body {
                Some(b) => req.send_bytes(b),
                None => req.call(),
            };
            match result {
                Ok(response) => {
                    return Ok(Reply {
                        status: response.status(),
                        response,
                    })
                }
                Err(ureq::Error::Status(401, resp)) if !authed_after_challenge => {
                    authed_after_challenge = true;
                    let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_string();
                    let (scheme, params) = parse_challenge(&challenge);
                    let has_bearer = self.bearer.lock().expect("lock").is_some();
                    if scheme == "bearer" && self.creds.token.is_none() && !has_bearer {
                        let token = self.fetch_token(&params)?;
                        *self.bearer.lock().expect("lock") = Some(token);
                        continue;
                    }
                    let given =
                        self.creds.token.is_some() || self.creds.user.is_some() || has_bearer;
                    return Err(Error::Auth {
                        remote: self.base.clone(),
                        reason: if given {
                            format!("{what}: HTTP 401, the credentials were rejected")
                        } else {
                            format!("{what}: HTTP 401, credentials needed (--user with VMT_REGISTRY_PASSWORD, or VMT_REGISTRY_TOKEN)")
                        },
                    });
                }
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    let detail = resp
                        .into_string()
                        .ok()
                        .and_then(|b| oci_error(&b))
                        .unwrap_or_default();
                    return Err(Error::Auth {
                        remote: self.base.clone(),
                        reason: format!("{what}: HTTP {code} {}", sanitize(&detail))
                            .trim()
                            .to_string(),
                    });
                }
                Err(ureq::Error::Status(code, resp)) if code >= 500 && attempt < self.retries => {
                    drop(resp);
                    attempt += 1;
                    std::thread::sleep(backoff(attempt).min(self.remaining(what)?));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let mut body = String::new();
                    let _ = resp.into_reader().take(64 << 10).read_to_string(&mut body);
                    let detail = oci_error(&body).unwrap_or(body);
                    return Err(Error::remote(
                        &self.base,
                        Some(code),
                        format!("{what}: HTTP {code} {}", sanitize(&detail))
                            .trim()
                            .to_string(),
                    ));
                }
                Err(ureq::Error::Transport(t)) if attempt < self.retries => {
                    tracing::debug!("{what}: {t}; retrying");
                    attempt += 1;
                    std::thread::sleep(backoff(attempt).min(self.remaining(what)?));
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::remote(
                        &self.base,
                        None,
                        format!("{what}: {}", sanitize(&t.to_string())),
                    ));
                }
            }
        }
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
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok\"") && s.contains("me"));
    }
}
