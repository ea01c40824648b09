//! The logins OCI tools share: containers' `auth.json` (podman, skopeo, buildah) and
//! docker's `config.json` (docker, oras), with their credential helpers.
//!
//! Both files have one format: `{"auths": {KEY: {"auth": base64("user:password")}},
//! "credHelpers": {HOST: NAME}, "credsStore": NAME}`. A key is a host (`host:port`), a
//! host with a repository path (`host/namespace/repo`: containers' scoped logins), or a
//! URL (`https://host/v1/`, docker's legacy keys). A helper is the program
//! `docker-credential-NAME`: `get` reads the host on stdin and prints
//! `{"ServerURL", "Username", "Secret"}` (the docker-credential-helpers protocol).
//!
//! Lookup order, as containers/image has it: `$REGISTRY_AUTH_FILE`, else
//! `$XDG_RUNTIME_DIR/containers/auth.json` and `$XDG_CONFIG_HOME/containers/auth.json`
//! (`~/.config/...`); then `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`). In each
//! file the most specific key wins (`host/ns/repo` before `host/ns` before `host`), then
//! the host's credential helper, then the file's `credsStore`. `vmt-hub login` writes
//! where `skopeo login` writes: `$REGISTRY_AUTH_FILE`, else the first auth.json above.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};

use super::client::Credentials;
use crate::error::{Error, Result};

/// The largest credentials file read (they hold a few logins).
const MAX_AUTH_FILE: u64 = 1 << 20;
/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where logins are read from and written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFiles {
    /// The files read, in lookup order (missing ones are skipped).
    pub read: Vec<PathBuf>,
    /// The file `login` and `logout` change.
    pub write: PathBuf,
}

impl AuthFiles {
    /// The files of the environment, in the order containers/image reads them.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
        if let Some(f) = var("REGISTRY_AUTH_FILE") {
            return Self::only(f);
        }
        let mut read = Vec::new();
        if let Some(run) = var("XDG_RUNTIME_DIR") {
            read.push(run.join("containers/auth.json"));
        }
        let config = var("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        read.push(config.join("containers/auth.json"));
        let docker = var("DOCKER_CONFIG").unwrap_or_else(|| home.join(".docker"));
        read.push(docker.join("config.json"));
        let write = read[0].clone();
        Self { read, write }
    }

    /// One file for both (`--authfile`).
    pub fn only(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            read: vec![path.clone()],
            write: path,
        }
    }

    /// The credentials for `repo` on `host` (`host[:port]`), from the first file that has
    /// any; `None` when no file has a login for it.
    ///
    /// # Errors
    /// A file that exists but cannot be read or parsed, an entry that is not
    /// base64 `user:password`, a helper that fails other than with "not found": each named.
    pub fn lookup(&self, host: &str, repo: &str) -> Result<Option<Credentials>> {
        for path in &self.read {
            let Some(doc) = read_auth_file(path)? else {
                continue;
            };
            if let Some(c) = lookup_in(&doc, path, host, repo)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Stores a login for `host` in [`AuthFiles::write`] (created 0600, replaced
    /// atomically; its other entries kept). Returns the file.
    ///
    /// # Errors
    /// The file cannot be read, parsed or written.
    pub fn store(&self, host: &str, user: &str, password: &str) -> Result<PathBuf> {
        let mut doc = read_auth_file(&self.write)?.unwrap_or_default();
        let auths = object_entry(&mut doc, "auths", &self.write)?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        auths.insert(host.to_string(), serde_json::json!({ "auth": auth }));
        write_auth_file(&self.write, &doc)?;
        Ok(self.write.clone())
    }

    /// Removes the login for `host` from [`AuthFiles::write`]; whether there was one.
    ///
    /// # Errors
    /// The file cannot be read, parsed or written.
    pub fn erase(&self, host: &str) -> Result<bool> {
        let Some(mut doc) = read_auth_file(&self.write)? else {
            return Ok(false);
        };
        let auths = object_entry(&mut doc, "auths", &self.write)?;
        let keys: Vec<String> = auths
            .keys()
            .filter(|k| key_host(k) == host && key_path(k).is_empty())
            .cloned()
            .collect();
        for k in &keys {
            auths.remove(k);
        }
        if !keys.is_empty() {
            write_auth_file(&self.write, &doc)?;
        }
        Ok(!keys.is_empty())
    }
}

/// Checks `user`/`password` against the registry at `base` (`http[s]://host[:port]`;
/// `GET /v2/` must succeed with them), then stores them for `host` in `files`. Returns the
/// file written.
///
/// # Errors
/// [`Error::Auth`] naming the host when the registry refuses them; the registry
/// unreachable; the file cannot be written.
pub fn login(
    files: &AuthFiles,
    client: &super::client::Client,
    host: &str,
    user: &str,
    password: &str,
) -> Result<PathBuf> {
    client.send("GET", "/v2/", &[], None, "login")?;
    files.store(host, user, password)
}

/// The host of a key: without scheme, path or a trailing slash.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The repository path of a key (empty for a host key or docker's `/v1/` URLs).
fn key_path(key: &str) -> &str {
    if key.starts_with("https://") || key.starts_with("http://") {
        return "";
    }
    key.split_once('/')
        .map_or("", |(_, p)| p.trim_end_matches('/'))
}

/// A parsed credentials file, `None` when it does not exist.
fn read_auth_file(path: &Path) -> Result<Option<Map<String, Value>>> {
    let bytes = match crate::file::read_limited(path, MAX_AUTH_FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(bad(path, "not a JSON object")),
        Err(e) => Err(Error::Json {
            path: path.into(),
            source: e,
        }),
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Credentials {
        origin: path.display().to_string(),
        reason: reason.into(),
    }
}

/// `doc[key]` as an object, created if absent.
fn object_entry<'a>(
    doc: &'a mut Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<&'a mut Map<String, Value>> {
    doc.entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| bad(path, format!("{key:?} is not an object")))
}

fn write_auth_file(path: &Path, doc: &Map<String, Value>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut bytes = serde_json::to_vec_pretty(doc).expect("JSON serialises");
    bytes.push(b'\n');
    crate::file::write_private(path, &bytes).map_err(|e| Error::io(path, e))
}

/// The login `doc` (read from `path`) has for `repo` on `host`.
fn lookup_in(
    doc: &Map<String, Value>,
    path: &Path,
    host: &str,
    repo: &str,
) -> Result<Option<Credentials>> {
    let scope = |k: &str| {
        let p = key_path(k);
        (key_host(k) == host && (p.is_empty() || repo == p || repo.starts_with(&format!("{p}/"))))
            .then_some(p.len())
    };
    let best = doc
        .get("auths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((scope(k)?, k, v)))
        .max_by_key(|(len, _, _)| *len);
    if let Some((_, key, entry)) = best {
        if let Some(c) = decode_entry(entry, path, key)? {
            return Ok(Some(c));
        }
    }
    let helper = doc
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| h.iter().find(|(k, _)| key_host(k) == host))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| doc.get("credsStore").and_then(Value::as_str));
    match helper {
        Some(name) => run_helper(name, host, path),
        None => Ok(None),
    }
}

/// An `auths` entry: `{"auth": base64("user:password")}` (or `username`/`password`).
fn decode_entry(entry: &Value, path: &Path, key: &str) -> Result<Option<Credentials>> {
    let source = Some(path.display().to_string());
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let what = format!("auths.{key:?}.auth is not base64 of user:password");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad(path, what.clone()))?;
        let text = String::from_utf8(raw).map_err(|_| bad(path, what.clone()))?;
        let (user, password) = text.split_once(':').ok_or_else(|| bad(path, what))?;
        return Ok(Some(Credentials {
            user: Some(user.into()),
            password: Some(password.into()),
            token: None,
            source,
        }));
    }
    let field = |k: &str| entry.get(k).and_then(Value::as_str).map(String::from);
    Ok(field("username").map(|user| Credentials {
        user: Some(user),
        password: field("password"),
        token: None,
        source,
    }))
}

/// `docker-credential-NAME get` for `host`: its login, `None` if it has none.
fn run_helper(name: &str, host: &str, file: &Path) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let named = |reason: String| bad(file, format!("credential helper {program}: {reason}"));
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(named("not a helper name".into()));
    }
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| named(format!("cannot run it: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(format!("{host}\n").as_bytes());
    drop(stdin);
    // Bounded: the helper's output is read on a thread, the wait has a deadline.
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = (&mut out).take(1 << 20).read_to_end(&mut o);
        let _ = (&mut err).take(64 << 10).read_to_end(&mut e);
        (o, e)
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| named(e.to_string()))? {
            break s;
        }
        if start.elapsed() > HELPER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(named(format!(
                "no answer within {} s",
                HELPER_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    let said = String::from_utf8_lossy(if stdout.is_empty() { &stderr } else { &stdout });
    if !status.success() {
        // The protocol's answer for a host it has no login for.
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(named(format!(
            "{status}: {}",
            super::client::sanitize(said.trim())
        )));
    }
    let v: Value = serde_json::from_slice(&stdout)
        .map_err(|e| named(format!("not the helpers' JSON answer: {e}")))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let source = Some(format!("{program} (named in {})", file.display()));
    Ok(Some(Credentials {
        user: field("Username"),
        password: field("Secret"),
        token: None,
        source,
    }))
}

/// The fuzz entry (`crate::fuzz::auth_file`): credentials-file bytes through the parts
/// of a lookup that read them (keys and `auths` entries; helpers are never run). No
/// panic, and a decoded login encodes back to what decodes to the same login.
pub(crate) fn fuzz_auth_file(data: &[u8]) {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let path = Path::new("fuzz.json");
    let auths = doc.get("auths").and_then(Value::as_object);
    for (key, entry) in auths.into_iter().flatten() {
        let (host, repo) = (key_host(key), key_path(key));
        assert!(
            !host.contains('/') && key.contains(host),
            "{host:?} from {key:?}"
        );
        assert!(!repo.ends_with('/'), "{repo:?} from {key:?}");
        if let Ok(Some(c)) = decode_entry(entry, path, key) {
            let (user, password) = (c.user.unwrap_or_default(), c.password.unwrap_or_default());
            if user.contains(':') {
                continue; // user:password cannot say where a user name with ':' ends
            }
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let again = decode_entry(&serde_json::json!({ "auth": auth }), path, key)
                .expect("re-encoded login decodes")
                .expect("a login");
            assert_eq!((again.user, again.password), (Some(user), Some(password)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn user(c: Option<Credentials>) -> Option<String> {
        c.and_then(|c| c.user)
    }

    #[test]
    fn the_most_specific_key_wins_and_urls_match_their_host() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let d = doc(serde_json::json!({"auths": {
            "reg.example:5000": {"auth": b("host:p")},
            "reg.example:5000/team": {"auth": b("team:p")},
            "reg.example:5000/team/vmt": {"auth": b("repo:p")},
            "https://legacy.example/v1/": {"auth": b("legacy:p")},
        }}));
        let p = Path::new("auth.json");
        let find = |h: &str, r: &str| user(lookup_in(&d, p, h, r).unwrap());
        assert_eq!(find("reg.example:5000", "team/vmt"), Some("repo".into()));
        assert_eq!(find("reg.example:5000", "team/other"), Some("team".into()));
        assert_eq!(find("reg.example:5000", "teamx/vmt"), Some("host".into()));
        assert_eq!(find("reg.example:5000", "x"), Some("host".into()));
        assert_eq!(find("legacy.example", "x"), Some("legacy".into()));
        assert_eq!(
            find("reg.example", "x"),
            None,
            "another port is another host"
        );
    }

    #[test]
    fn store_and_erase_keep_other_entries_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/auth.json");
        let files = AuthFiles::only(&f);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(
            &f,
            r#"{"auths": {"other:1": {"auth": "eDp5"}}, "credsStore": "x"}"#,
        )
        .unwrap();
        files.store("h:5000", "u", "p:w").unwrap();
        let c = files.lookup("h:5000", "r").unwrap().unwrap();
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p:w"))
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(files.erase("h:5000").unwrap());
        assert!(!files.erase("h:5000").unwrap());
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.contains("other:1") && text.contains("credsStore"),
            "{text}"
        );
        std::fs::write(&f, r#"{"auths": {"h:5000": {"auth": "%%%"}}}"#).unwrap();
        match files.lookup("h:5000", "r") {
            Err(Error::Credentials { origin, reason }) => {
                assert!(
                    origin.ends_with("auth.json") && reason.contains("base64"),
                    "{reason}"
                )
            }
            other => panic!("expected Error::Credentials, got {other:?}"),
        }
        std::fs::write(&f, "[1]").unwrap();
        assert!(matches!(
            files.lookup("h:5000", "r"),
            Err(Error::Credentials { .. })
        ));
    }
}
