//! Remote inspection without pulling: a repository's tags (following the spec's
//! `Link` pages) and a bundle's manifest and config, validated as a pull validates them,
//! without its components. Nothing is written anywhere.

use std::path::Path;

use super::client::{sanitize, Client};
use super::transfer::fetch_manifest;
use super::{valid_tag, RemoteRef};
use crate::bundle::check::check_manifest;
use crate::bundle::dir::parse_config;
use crate::bundle::BundleConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::Manifest;

/// The most tags [`list_tags`] reads (pages stop there).
pub const MAX_TAGS: usize = 100_000;
/// The largest config read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A remote bundle as its manifest and config describe it.
#[derive(Debug, Clone)]
pub struct RemoteBundle {
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The config, validated.
    pub config: BundleConfig,
    /// Signatures the remote has for it (cosign's `.sig` tag, or referrers).
    pub signatures: usize,
}

/// The `rel="next"` target of a `Link` header, if any.
pub(crate) fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Every tag of `remote`'s repository, in pages of `page` (the `n` of the spec),
/// following `Link` headers; at most [`MAX_TAGS`].
///
/// # Errors
/// The remote's errors (404 `NAME_UNKNOWN` for a repository it does not have); a
/// listing that is not `{"tags": [...]}`, or a `Link` that leaves the registry.
pub fn list_tags(client: &Client, remote: &RemoteRef, page: usize) -> Result<Vec<String>> {
    let name = format!("oci://{}/{}", remote.host, remote.repo);
    let mut next = Some(format!("/v2/{}/tags/list?n={}", remote.repo, page.max(1)));
    let mut tags: Vec<String> = Vec::new();
    while let Some(link) = next.take() {
        // Relative, or absolute on this registry (both are the spec's).
        let path = link
            .strip_prefix(client.base.as_str())
            .unwrap_or(&link)
            .to_string();
        if !path.starts_with('/') {
            return Err(Error::remote(
                &name,
                None,
                format!("a Link that leaves the registry: {}", sanitize(&path)),
            ));
        }
        let reply = client.send("GET", &path, &[], None, "tag list")?;
        next = reply.header("Link").and_then(|l| next_link(&l));
        let body = reply.body(16 << 20, "tag list", &name)?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::remote(&name, None, format!("tag list is not JSON: {e}")))?;
        // Only names that are tags: a hostile registry's terminal escapes are dropped.
        let page_tags = v["tags"].as_array().map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().filter(|t| valid_tag(t)).map(String::from))
                .collect::<Vec<_>>()
        });
        let Some(page_tags) = page_tags else {
            break; // distribution answers `"tags": null` for an empty repository
        };
        if page_tags.is_empty() {
            break;
        }
        tags.extend(page_tags);
        if tags.len() >= MAX_TAGS {
            tags.truncate(MAX_TAGS);
            break;
        }
    }
    Ok(tags)
}

/// The bundle `remote` names, from its manifest and config only (each checked against
/// its digest and validated as a pull validates them).
///
/// # Errors
/// As [`crate::remote::transfer::pull`] for the manifest and config.
pub fn inspect(client: &Client, remote: &RemoteRef) -> Result<RemoteBundle> {
    let name = remote.to_string();
    let (_, digest, manifest) = fetch_manifest(client, remote)?;
    check_manifest(&manifest, &name)?;
    let bytes = super::signatures::small_blob(
        client,
        &remote.repo,
        &manifest.config,
        MAX_CONFIG_BYTES,
        &name,
    )?;
    let config = parse_config(&bytes, Path::new(&format!("{name} config")))?;
    crate::bundle::check::check_layers(&manifest, &config, &name)?;
    let signatures = super::signatures::fetch(client, &remote.repo, &digest, &name)
        .map(|f| f.map_or(0, |f| f.signatures.len()))
        .unwrap_or(0);
    Ok(RemoteBundle {
        digest,
        manifest,
        config,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_read_as_the_spec_writes_them() {
        let l = r#"</v2/a/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(next_link(l).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }
}
