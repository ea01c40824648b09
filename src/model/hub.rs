//! Backbones from the Hugging Face Hub, in the standard cache shared with Python's
//! `huggingface_hub` (`models--owner--name/{blobs,snapshots,refs}`).
//!
//! Environment, as in Python: `HF_ENDPOINT` (default <https://huggingface.co>),
//! `HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), `HF_TOKEN`
//! (else `$HF_HOME/token`), `HF_HUB_OFFLINE=1` (cache only, no request at all).
//!
//! A file already in the cache for the requested revision is used with no request. A
//! downloaded weights file is checked against its ETag (the sha256 the Hub reports for
//! LFS files) before it is used; the digest recorded in bundles is that sha256.

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

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(err) if matches!(err.as_ref(), ureq::Error::Status(404, _)))
}

/// Fetches (or finds in the cache) `config.json` and the weights of `r`.
pub fn fetch(env: &HubEnv, r: &HubRef) -> Result<HubBackbone> {
    if let Some(hit) = cached(env, r) {
        return Ok(hit);
    }
    if env.offline {
        return Err(ModelError::bad_input(
            format!("{}@{}", r.repo, r.revision),
            format!(
                "HF_HUB_OFFLINE is set and it is not in the cache at {}",
                env.cache.display()
            ),
        ));
    }
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
    repo.get("config.json")
        .map_err(|e| hub_error(r, "config.json", e))?;
    let mut last = None;
    for file in WEIGHT_FILES {
        match repo.download(file) {
            Ok(path) => {
                verify_download(&path, r, file)?;
                last = None;
                break;
            }
            Err(e) if is_not_found(&e) => last = Some(hub_error(r, file, e)),
            Err(e) => return Err(hub_error(r, file, e)),
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    cached(env, r).ok_or_else(|| {
        ModelError::bad_input(
            format!("{}@{}", r.repo, r.revision),
            "downloaded, but the cache has no complete snapshot",
        )
    })
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
        for bad in ["random:tiny", "./dir", "a/b/c", "a/", "a/b@", "/abs/path"] {
            assert_eq!(HubRef::parse(bad), None, "{bad}");
        }
    }
}
