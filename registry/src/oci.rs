//! OCI image-manifest types (image-spec v1.1) for bundles, and canonical JSON.
//!
//! A bundle is an artifact: `artifactType` [`BUNDLE_ARTIFACT_TYPE`], a config blob
//! (`bundle.json` as canonical JSON) and one safetensors layer per component, each
//! titled with its component name. A manifest carries no tag: tags are registry state
//! (see `store::tags`), so the same bundle has the same digest under every name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;

/// OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of a vmt bundle.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.vmt.bundle.v1+json";
/// Media type of a bundle config (`bundle.json`).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.vmt.bundle.config.v1+json";
/// Media type of a component layer (safetensors).
pub const COMPONENT_MEDIA_TYPE: &str = "application/vnd.vmt.component.v1.safetensors";
/// Layer annotation holding the component name (`shared`, `task/<name>`).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The content's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// The content's size in bytes.
    pub size: u64,
    /// Annotations (`org.opencontainers.image.title` names a component).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The component name of a layer (its title annotation).
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE_ANNOTATION).map(String::as_str)
    }
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The OCI image manifest media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    /// `application/vnd.vmt.bundle.v1+json` (absent in manifests that ORAS clients write).
    pub artifact_type: Option<String>,
    /// The bundle config.
    pub config: Descriptor,
    /// One layer per component.
    pub layers: Vec<Descriptor>,
    /// Annotations (never a tag).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses a manifest and checks that it is a vmt bundle.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not an OCI manifest: {e}"))?;
        if m.schema_version != 2 || m.media_type != MANIFEST_MEDIA_TYPE {
            return Err(format!(
                "schemaVersion {} / mediaType {:?} is not an OCI image manifest",
                m.schema_version, m.media_type
            ));
        }
        // Image spec 1.1: without `artifactType`, `config.mediaType` says what the
        // artifact is (ORAS clients that cannot set artifactType rely on this).
        match m.artifact_type.as_deref() {
            Some(BUNDLE_ARTIFACT_TYPE) | None => {}
            Some(other) => {
                return Err(format!(
                    "artifactType {other:?} is not a vmt bundle ({BUNDLE_ARTIFACT_TYPE})"
                ))
            }
        }
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(format!(
                "config mediaType {:?} is not a vmt bundle config ({CONFIG_MEDIA_TYPE})",
                m.config.media_type
            ));
        }
        for l in &m.layers {
            if l.media_type != COMPONENT_MEDIA_TYPE || l.title().is_none() {
                return Err(format!("layer {} is not a titled vmt component", l.digest));
            }
        }
        Ok(m)
    }

    /// Canonical bytes (sorted keys, no spaces): the digest is a function of content.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        canonical_json(&serde_json::to_value(self).expect("manifest serialises"))
    }

    /// Every blob it references: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// OCI image index media type (what the referrers API answers with).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's image manifest media type (schema 2), which some signers still write.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The most layers an attached artifact may have.
pub const MAX_ARTIFACT_LAYERS: usize = 256;

/// An image manifest of any artifact attached to a bundle: a signature, an SBOM. Its
/// `subject` (image-spec v1.1) names the bundle; cosign's tag scheme names it by tag
/// instead (`sha256-<hex>.sig`), without a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The OCI image manifest media type (or Docker's schema 2).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// What the artifact is (when absent, `config.mediaType` says).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The content blobs.
    pub layers: Vec<Descriptor>,
    /// The manifest this one is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactManifest {
    /// Parses an image manifest: schema 2, an OCI or Docker manifest media type, at
    /// most [`MAX_ARTIFACT_LAYERS`] layers.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: ArtifactManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not an image manifest: {e}"))?;
        let known = [MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE];
        if m.schema_version != 2 || !known.contains(&m.media_type.as_str()) {
            return Err(format!(
                "schemaVersion {} / mediaType {:?} is not an image manifest",
                m.schema_version, m.media_type
            ));
        }
        if m.layers.len() > MAX_ARTIFACT_LAYERS {
            return Err(format!(
                "{} layers (at most {MAX_ARTIFACT_LAYERS})",
                m.layers.len()
            ));
        }
        Ok(m)
    }

    /// Its artifact type: `artifactType`, else the config's media type (image-spec v1.1).
    pub fn artifact_type(&self) -> &str {
        self.artifact_type
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.config.media_type)
    }

    /// Every blob it references: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// A manifest descriptor in an image index, with its artifact type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDescriptor {
    /// The manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// The manifest's artifact type.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index: the referrers API's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`INDEX_MEDIA_TYPE`].
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The manifests.
    pub manifests: Vec<IndexDescriptor>,
}

impl ImageIndex {
    /// An index of `manifests`.
    pub fn of(manifests: Vec<IndexDescriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.into(),
            manifests,
        }
    }
}

/// Canonical JSON: object keys sorted at every level, no insignificant whitespace.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).expect("JSON value serialises")
}

/// The error codes of an error body (`{"errors": [{"code", "message"}]}`): those of the
/// OCI distribution spec (v1.1, "Error Codes"), and `TAG_INVALID`, `UNAVAILABLE`, `NOT_FOUND`
/// and `UNKNOWN`, which registries (distribution's among them) send beyond it. `serve`
/// answers with these and the client reads them ([`crate::Error::Remote`]'s `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The blob is not in the repository.
    BlobUnknown,
    /// The blob upload is invalid (a bad range, a wrong size).
    BlobUploadInvalid,
    /// The upload session is unknown (ended, or never started).
    BlobUploadUnknown,
    /// The content does not match its digest, or the digest is malformed.
    DigestInvalid,
    /// A blob the manifest references is not in the repository.
    ManifestBlobUnknown,
    /// The manifest is invalid.
    ManifestInvalid,
    /// The manifest is not in the repository.
    ManifestUnknown,
    /// The repository name is invalid.
    NameInvalid,
    /// The repository is unknown.
    NameUnknown,
    /// The content is larger than allowed, or of another size than declared.
    SizeInvalid,
    /// Authentication is required.
    Unauthorized,
    /// Access is denied.
    Denied,
    /// The operation is not supported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// The tag is invalid (beyond the spec).
    TagInvalid,
    /// The registry is busy; try again (beyond the spec).
    Unavailable,
    /// No such endpoint (beyond the spec).
    NotFound,
    /// Any other failure (beyond the spec).
    Unknown,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [ErrorCode; 18] = [
        Self::BlobUnknown,
        Self::BlobUploadInvalid,
        Self::BlobUploadUnknown,
        Self::DigestInvalid,
        Self::ManifestBlobUnknown,
        Self::ManifestInvalid,
        Self::ManifestUnknown,
        Self::NameInvalid,
        Self::NameUnknown,
        Self::SizeInvalid,
        Self::Unauthorized,
        Self::Denied,
        Self::Unsupported,
        Self::TooManyRequests,
        Self::TagInvalid,
        Self::Unavailable,
        Self::NotFound,
        Self::Unknown,
    ];

    /// The code as the wire has it (`BLOB_UNKNOWN`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::TagInvalid => "TAG_INVALID",
            Self::Unavailable => "UNAVAILABLE",
            Self::NotFound => "NOT_FOUND",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The code a wire string names, if it is one of these.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error body with one error: `{"errors": [{"code": CODE, "message": MESSAGE}]}`.
pub fn error_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({"errors": [{"code": code.as_str(), "message": message}]}).to_string()
}

/// The errors of an error body: each code (None for one this crate does not know) with
/// its wire string and message; None for a body that is not one.
pub fn parse_error_body(body: &str) -> Option<Vec<(Option<ErrorCode>, String, String)>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some(
        errors
            .iter()
            .map(|e| {
                let code = text(e, "code");
                (ErrorCode::parse(&code), code, text(e, "message"))
            })
            .collect(),
    )
}

#[cfg(test)]
mod error_code_tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_an_error_body() {
        for code in ErrorCode::ALL {
            let body = error_body(code, "why");
            let parsed = parse_error_body(&body).unwrap();
            assert_eq!(
                parsed,
                vec![(Some(code), code.to_string(), "why".to_string())]
            );
        }
        let other = parse_error_body(r#"{"errors":[{"code":"NEW_CODE"}]}"#).unwrap();
        assert_eq!(other, vec![(None, "NEW_CODE".to_string(), String::new())]);
        assert!(parse_error_body("<html>").is_none());
    }
}
