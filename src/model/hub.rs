//! Backbones from the Hugging Face Hub, in the standard cache shared with Python's
//! `huggingface_hub` (`models--owner--name/{blobs,snapshots,refs}`).
//!
//! Environment, as in Python: `HF_ENDPOINT` (default <https://huggingface.co>),
//! `HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), `HF_TOKEN`
//! (else `$HF_HOME/token`), `HF_HUB_OFFLINE=1` (cache only, no request at all).
//!
//! A commit already in the cache is used with no request. A branch or tag (`main`) may
//! have moved: online, one metadata request per file asks the Hub where it points now
//! (as `huggingface_hub` does) and a file whose blob is already cached is linked into
//! the new snapshot, not downloaded again; offline (or when the Hub cannot be reached),
//! the cached commit is used and [`HubBackbone::note`] says so. A downloaded weights file
//! is checked against its ETag (the sha256 the Hub reports for LFS files) before it is
//! used; the digest recorded in bundles is that sha256.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use vmt_registry::Digest;

use super::error::{ModelError, Result};

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// `HF_ENDPOINT`.
    pub endpoint: String,
    /// The hub cache folder.
    pub cache: PathBuf,
    /// `HF_TOKEN`.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: cache only.
    pub offline: bool,
    /// Show download progress.
    pub progress: bool,
}

impl HubEnv {
    /// Reads the Hugging Face environment variables, as Python does.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let h = var("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            h.join(".cache").join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache,
            token,
            offline,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// `owner/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit.
    pub revision: String,
}

impl HubRef {
    /// Parses `owner/name[@revision]` (revision defaults to `main`); None if `s` does not
    /// look like a repo id.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("hf:").unwrap_or(s);
        let (repo, revision) = match s.split_once('@') {
            Some((r, v)) if !v.is_empty() => (r, v),
            Some(_) => return None,
            None => (s, "main"),
        };
        // A revision names a file under refs/: no empty, `.` or `..` component.
        if revision
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains(['\\', '\0']))
        {
            return None;
        }
        let parts: Vec<&str> = repo.split('/').collect();
        let ok = parts.len() == 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && !p.starts_with('.')
            });
        ok.then(|| Self {
            repo: repo.into(),
            revision: revision.into(),
        })
    }

    fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit())
    }
}

/// A backbone in the cache: its snapshot directory and what was resolved.
#[derive(Debug, Clone)]
pub struct HubBackbone {
    /// `owner/name`.
    pub repo: String,
    /// The commit the revision resolved to.
    pub commit: String,
    /// `snapshots/<commit>/` with `config.json` and the weights.
    pub snapshot: PathBuf,
    /// `model.safetensors`, or `pytorch_model.bin` when the repo has no safetensors.
    pub weights: PathBuf,
    /// `sha256:<hex>` of the weights.
    pub digest: String,
    /// Set when a branch or tag was taken from the cache without asking the Hub
    /// (offline, or the Hub unreachable): it may have moved since.
    pub note: Option<String>,
}

const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

fn repo_dir(env: &HubEnv, repo: &str) -> PathBuf {
    env.cache
        .join(format!("models--{}", repo.replace('/', "--")))
}

/// The commit a revision points to in the cache, if known.
fn cached_commit(env: &HubEnv, r: &HubRef) -> Option<String> {
    if r.is_commit() {
        return Some(r.revision.clone());
    }
    std::fs::read_to_string(repo_dir(env, &r.repo).join("refs").join(&r.revision))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The cached snapshot of `r`, if it has config.json and a weights file.
pub fn cached(env: &HubEnv, r: &HubRef) -> Option<HubBackbone> {
    let commit = cached_commit(env, r)?;
    let snapshot = repo_dir(env, &r.repo).join("snapshots").join(&commit);
    if !snapshot.join("config.json").is_file() {
        return None;
    }
    let weights = WEIGHT_FILES
        .iter()
        .map(|f| snapshot.join(f))
        .find(|p| p.is_file())?;
    let digest = digest_of_cached(&weights).ok()?;
    Some(HubBackbone {
        repo: r.repo.clone(),
        commit,
        snapshot,
        weights,
        digest,
        note: None,
    })
}

/// The sha256 of a cached file: its blob's name when that is a sha256 (LFS files, checked
/// when downloaded), else computed.
fn digest_of_cached(path: &Path) -> std::io::Result<String> {
    let blob = std::fs::canonicalize(path)?;
    if let Some(d) = blob
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(Digest::from_hex)
    {
        return Ok(d.to_string());
    }
    Digest::of_file(path)
        .map(|d| d.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn hub_error(r: &HubRef, file: &str, e: ApiError) -> ModelError {
    let what = format!("{}@{} {file}", r.repo, r.revision);
    let reason = match &e {
        ApiError::RequestError(err) => match err.as_ref() {
            ureq::Error::Status(401, _) | ureq::Error::Status(403, _) => {
                "access denied (401/403): the repo is gated or private; accept its terms on the Hub and set HF_TOKEN".to_string()
            }
            ureq::Error::Status(404, _) => "not found (404): no such repo, revision or file".to_string(),
            ureq::Error::Status(code, _) => format!("the Hub answered HTTP {code}"),
            ureq::Error::Transport(t) => format!("cannot reach the Hub: {t}"),
        },
        other => other.to_string(),
    };
    ModelError::bad_input(what, reason)
}

/// Fetches (or finds in the cache) `config.json` and the weights of `r`.
///
/// # Errors
/// Offline and not cached; the Hub refuses (gated, missing repo, revision or file) or
/// cannot be reached with nothing cached; a download that does not match its ETag.
pub fn fetch(env: &HubEnv, r: &HubRef) -> Result<HubBackbone> {
    // A commit never moves: a cached one needs no request.
    if r.is_commit() {
        if let Some(hit) = cached(env, r) {
            return Ok(hit);
        }
    }
    if env.offline {
        let mut hit = cached(env, r).ok_or_else(|| {
            ModelError::bad_input(
                format!("{}@{}", r.repo, r.revision),
                format!(
                    "HF_HUB_OFFLINE is set and it is not in the cache at {}",
                    env.cache.display()
                ),
            )
        })?;
        if !r.is_commit() {
            hit.note = Some(format!(
                "HF_HUB_OFFLINE: {} as cached (commit {}); the Hub may have moved it since",
                r.revision, hit.commit
            ));
        }
        return Ok(hit);
    }
    match fetch_online(env, r) {
        Err(HubFailure::Unreachable(why)) => match cached(env, r) {
            Some(mut hit) => {
                hit.note = Some(format!(
                    "the Hub could not be reached ({why}): {} as cached (commit {})",
                    r.revision, hit.commit
                ));
                Ok(hit)
            }
            None => Err(ModelError::bad_input(
                format!("{}@{}", r.repo, r.revision),
                format!("cannot reach the Hub: {why}"),
            )),
        },
        Err(HubFailure::Refused(e)) => Err(e),
        Ok(commit) => {
            let at = HubRef {
                repo: r.repo.clone(),
                revision: commit,
            };
            cached(env, &at).ok_or_else(|| {
                ModelError::bad_input(
                    format!("{}@{}", r.repo, r.revision),
                    "downloaded, but the cache has no complete snapshot",
                )
            })
        }
    }
}

/// Why an online fetch failed.
enum HubFailure {
    /// No answer from the Hub (the cache may still serve).
    Unreachable(String),
    /// An answer that refuses (or a bad download): final.
    Refused(ModelError),
}

impl From<ModelError> for HubFailure {
    fn from(e: ModelError) -> Self {
        HubFailure::Refused(e)
    }
}

/// Resolves `r` on the Hub and brings `config.json` and the weights into the cache;
/// returns the commit.
fn fetch_online(env: &HubEnv, r: &HubRef) -> std::result::Result<String, HubFailure> {
    let api = ApiBuilder::new()
        .with_endpoint(env.endpoint.clone())
        .with_cache_dir(env.cache.clone())
        .with_token(env.token.clone())
        .with_progress(env.progress)
        .with_retries(2)
        .build()
        .map_err(|e| ModelError::bad_input("Hugging Face client", e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        r.repo.clone(),
        RepoType::Model,
        r.revision.clone(),
    ));
    let Some(commit) = get_file(env, &repo, r, "config.json")? else {
        return Err(ModelError::bad_input(
            format!("{}@{} config.json", r.repo, r.revision),
            "not found (404): no such repo, revision or file",
        )
        .into());
    };
    for file in WEIGHT_FILES {
        if get_file(env, &repo, r, file)?.is_some() {
            return Ok(commit);
        }
    }
    Err(ModelError::bad_input(
        format!("{}@{} {}", r.repo, r.revision, WEIGHT_FILES.join(" or ")),
        "not found (404): the repo has no weights file",
    )
    .into())
}

/// `file` of `r` in the cache as the Hub has it now: the commit it is at, or `None`
/// when the Hub has no such file (404). A blob already cached is linked, not downloaded.
fn get_file(
    env: &HubEnv,
    repo: &hf_hub::api::sync::ApiRepo,
    r: &HubRef,
    file: &str,
) -> std::result::Result<Option<String>, HubFailure> {
    let Some((commit, etag)) = file_metadata(env, r, file)? else {
        return Ok(None);
    };
    let dir = repo_dir(env, &r.repo);
    if dir.join("blobs").join(&etag).is_file() {
        link_cached(&dir, r, &commit, file, &etag).map_err(|e| ModelError::io(&dir, e))?;
        return Ok(Some(commit));
    }
    let path = repo.download(file).map_err(|e| match &e {
        ApiError::RequestError(err) if matches!(err.as_ref(), ureq::Error::Transport(_)) => {
            HubFailure::Unreachable(err.to_string())
        }
        _ => HubFailure::Refused(hub_error(r, file, e)),
    })?;
    verify_download(&path, r, file)?;
    Ok(Some(commit))
}

/// What the Hub says about `file` at `r.revision` now: (commit, ETag), from one GET of
/// its first byte without following redirects (huggingface_hub's
/// `get_hf_file_metadata`); `None` for a 404.
fn file_metadata(
    env: &HubEnv,
    r: &HubRef,
    file: &str,
) -> std::result::Result<Option<(String, String)>, HubFailure> {
    let url = format!("{}/{}/resolve/{}/{file}", env.endpoint, r.repo, r.revision);
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout_read(std::time::Duration::from_secs(30))
        .build();
    let mut req = agent.get(&url).set("Range", "bytes=0-0");
    if let Some(t) = &env.token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let reply = match req.call() {
        Ok(reply) => reply,
        Err(ureq::Error::Status(404, _)) => return Ok(None),
        Err(e @ ureq::Error::Status(..)) => {
            let e = ApiError::RequestError(Box::new(e));
            return Err(HubFailure::Refused(hub_error(r, file, e)));
        }
        Err(ureq::Error::Transport(t)) => return Err(HubFailure::Unreachable(t.to_string())),
    };
    let header = |k: &str| {
        reply
            .header(k)
            .map(|v| v.trim_start_matches("W/").trim_matches('"').to_string())
    };
    let commit = header("X-Repo-Commit").filter(|c| !c.is_empty());
    let etag = header("X-Linked-Etag")
        .or_else(|| header("ETag"))
        .filter(|e| !e.is_empty());
    // A blob's name in the cache is its ETag: nothing with a path in it.
    let safe = |v: &String| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    match (commit, etag) {
        (Some(c), Some(e)) if safe(&c) && safe(&e) => Ok(Some((c, e))),
        _ => Err(HubFailure::Refused(ModelError::bad_input(
            format!("{}@{} {file}", r.repo, r.revision),
            "the Hub's answer has no usable X-Repo-Commit and ETag",
        ))),
    }
}

/// Links cached blob `etag` as `snapshots/<commit>/<file>` (relative, as huggingface_hub
/// does) and points the revision's ref at `commit`.
fn link_cached(
    dir: &Path,
    r: &HubRef,
    commit: &str,
    file: &str,
    etag: &str,
) -> std::io::Result<()> {
    let snapshot = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot)?;
    let pointer = snapshot.join(file);
    if !pointer.exists() {
        let _ = std::fs::remove_file(&pointer); // a dangling link
        std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), &pointer)?;
    }
    if !r.is_commit() {
        let reference = dir.join("refs").join(&r.revision);
        std::fs::create_dir_all(reference.parent().expect("refs/<revision>"))?;
        vmt_registry::file::write_atomic(&reference, commit.as_bytes())?;
    }
    Ok(())
}

/// A downloaded LFS file must hash to its ETag; a mismatch removes it and fails.
fn verify_download(path: &Path, r: &HubRef, file: &str) -> Result<()> {
    let blob = std::fs::canonicalize(path).map_err(|e| ModelError::io(path, e))?;
    let Some(expected) = blob
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(Digest::from_hex)
    else {
        return Ok(()); // not an LFS file: the ETag is no content hash
    };
    let actual = Digest::of_file(&blob)
        .map_err(|e| ModelError::bad_input(blob.display().to_string(), e.to_string()))?;
    if actual != expected {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(path);
        return Err(ModelError::bad_input(
            format!("{}@{} {file}", r.repo, r.revision),
            format!("downloaded bytes hash to {actual}, but the Hub's ETag says {expected}; the file was discarded"),
        ));
    }
    Ok(())
}

/// A cached Swin that `--backbone` accepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CachedBackbone {
    /// `owner/name`.
    pub repo: String,
    /// The snapshot's commit.
    pub commit: String,
    /// The snapshot folder.
    pub snapshot: PathBuf,
    /// `hf` (a Hugging Face `SwinConfig`) or `timm` (a timm config naming a Swin).
    pub format: &'static str,
}

/// Every cached Swin backbone, in either format `--backbone` reads.
pub fn list_cached(env: &HubEnv) -> Vec<CachedBackbone> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&env.cache) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(repo) = name.strip_prefix("models--") else {
            continue;
        };
        let repo = repo.replacen("--", "/", 1);
        let Ok(snaps) = std::fs::read_dir(e.path().join("snapshots")) else {
            continue;
        };
        for s in snaps.flatten() {
            let config = s.path().join("config.json");
            // What `--backbone` accepts is what read_config parses.
            if crate::model::backbone::read_config(&config).is_err() {
                continue;
            }
            let timm = std::fs::read_to_string(&config)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v.get("architecture").is_some());
            out.push(CachedBackbone {
                repo: repo.clone(),
                commit: s.file_name().to_string_lossy().into_owned(),
                snapshot: s.path(),
                format: if timm { "timm" } else { "hf" },
            });
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_ids() {
        assert_eq!(
            HubRef::parse("microsoft/swin-tiny-patch4-window7-224"),
            Some(HubRef {
                repo: "microsoft/swin-tiny-patch4-window7-224".into(),
                revision: "main".into()
            })
        );
        assert_eq!(HubRef::parse("hf:a/b@v1.0").unwrap().revision, "v1.0");
        for bad in [
            "random:tiny",
            "./dir",
            "a/b/c",
            "a/",
            "a/b@",
            "/abs/path",
            "a/b@../../x",
            "a/b@x//y",
        ] {
            assert_eq!(HubRef::parse(bad), None, "{bad}");
        }
    }
}
