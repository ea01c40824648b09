//! Remotes: the OCI Distribution API, as a client (push, pull) and a server (`serve`).
//!
//! A remote is `oci://HOST[:PORT]/REPO[:TAG|@sha256:...]`; `http` is used for loopback
//! hosts (or with `--insecure`), `https` otherwise.

pub mod client;
pub mod inspect;
pub mod logins;
pub mod server;
mod signatures;
pub mod transfer;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A parsed `oci://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `http://host:port` or `https://host:port`.
    pub base: String,
    /// `host[:port]`.
    pub host: String,
    /// The repository.
    pub repo: String,
    /// Tag or digest.
    pub reference: RemoteTarget,
}

/// A tag or a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteTarget {
    /// A tag.
    Tag(String),
    /// A manifest digest.
    Digest(Digest),
}

impl std::fmt::Display for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteTarget::Tag(t) => f.write_str(t),
            RemoteTarget::Digest(d) => write!(f, "{d}"),
        }
    }
}

pub use crate::reference::{valid_name as valid_repo_name, valid_tag};

/// The URL a registry on `host` (`host[:port]`) is reached at: `http` for loopback hosts
/// or with `insecure`, `https` otherwise.
pub fn base_url(host: &str, insecure: bool) -> String {
    let hostname = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback =
        matches!(hostname, "localhost" | "127.0.0.1" | "::1") || hostname.starts_with("127.");
    let scheme = if loopback || insecure {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{host}")
}

impl RemoteRef {
    /// Parses `oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`; `insecure` uses http for any host.
    pub fn parse(s: &str, insecure: bool) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: s.into(),
            reason: reason.into(),
        };
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| invalid("a remote starts with oci:// (oci://HOST[:PORT]/REPO[:TAG])"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no repository after the host"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
            (r, RemoteTarget::Digest(d.parse()?))
        } else {
            match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, RemoteTarget::Tag(t.into())),
                _ => (path, RemoteTarget::Tag("latest".into())),
            }
        };
        if !valid_repo_name(repo) {
            return Err(invalid(
                "the repository name must be lowercase letters, digits and . _ - separated by /",
            ));
        }
        if let RemoteTarget::Tag(t) = &reference {
            if !valid_tag(t) {
                return Err(invalid(
                    "a tag is letters, digits, '.', '_' and '-' (at most 128)",
                ));
            }
        }
        Ok(Self {
            base: base_url(host, insecure),
            host: host.into(),
            repo: repo.into(),
            reference,
        })
    }
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            RemoteTarget::Tag(t) => write!(f, "oci://{}/{}:{t}", self.host, self.repo),
            RemoteTarget::Digest(d) => write!(f, "oci://{}/{}@{d}", self.host, self.repo),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_remotes() {
        let r = RemoteRef::parse("oci://127.0.0.1:5000/team/vmt:v1", false).unwrap();
        assert_eq!(
            (r.base.as_str(), r.repo.as_str()),
            ("http://127.0.0.1:5000", "team/vmt")
        );
        assert_eq!(r.reference, RemoteTarget::Tag("v1".into()));
        assert_eq!(
            RemoteRef::parse("oci://ghcr.io/acme/vmt", false)
                .unwrap()
                .base,
            "https://ghcr.io"
        );
        assert_eq!(
            RemoteRef::parse("oci://reg.lan:5000/a:b", true)
                .unwrap()
                .base,
            "http://reg.lan:5000"
        );
        let d = Digest::of(b"m");
        assert_eq!(
            RemoteRef::parse(&format!("oci://h/a@{d}"), false)
                .unwrap()
                .reference,
            RemoteTarget::Digest(d)
        );
        for bad in [
            "http://h/a",
            "oci://h",
            "oci://h/../etc:x",
            "oci://h/A:b",
            "oci://h/a:b c",
        ] {
            assert!(RemoteRef::parse(bad, false).is_err(), "{bad}");
        }
    }
}
