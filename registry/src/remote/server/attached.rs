//! Artifacts attached to bundles in `serve` (signatures, SBOMs): the manifests it
//! stores beside bundles, and the OCI 1.1 referrers API that lists them.
//!
//! A manifest that is not a bundle is accepted only when it is about a bundle of the
//! same repository: its `subject` names one (the answer then carries `OCI-Subject`), or
//! it is pushed under cosign's tag scheme (`sha256-<hex of the bundle>.sig`). Its
//! blobs must be in the repository, as a bundle's must.

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{internal, manifest_invalid, oci_error, query, ServerState};
use crate::digest::Digest;
use crate::oci::{ArtifactManifest, ErrorCode, ImageIndex, INDEX_MEDIA_TYPE};
use crate::store::{subject_of_tag, Referrer};

/// PUT of a manifest that is not a bundle, by tag (`sha256-<hex>.sig`) or by digest.
/// `not_bundle` says why it is not a bundle (the answer when it is no artifact either).
pub(super) fn put_attached(
    st: &ServerState,
    name: &str,
    reference: &str,
    body: &[u8],
    not_bundle: &str,
) -> Response {
    let manifest = match ArtifactManifest::parse(body) {
        Ok(m) => m,
        Err(e) => return manifest_invalid(e),
    };
    let tag = (!reference.starts_with("sha256:")).then_some(reference);
    let subject = match (&manifest.subject, tag.and_then(subject_of_tag)) {
        (Some(s), _) => s.digest,
        (None, Some(s)) => s,
        (None, None) => {
            return manifest_invalid(format!(
                "{not_bundle}; this registry stores vmt bundles, and artifacts about one \
                 (a manifest with a `subject`, or tagged sha256-<hex of the bundle>.sig)"
            ))
        }
    };
    if let Some(t) = tag {
        if subject_of_tag(t) != Some(subject) {
            return manifest_invalid(format!("tag {t} does not name the subject {subject}"));
        }
    }
    let in_repo = st
        .reg
        .knows_manifest(&subject)
        .and_then(|k| Ok(k && st.reg.repo_has_blob(name, &subject)?));
    match in_repo {
        Ok(true) => {}
        Ok(false) => {
            return oci_error(
                StatusCode::NOT_FOUND,
                ErrorCode::ManifestUnknown,
                &format!("the subject {subject} is not a bundle of {name}: push it first"),
            )
        }
        Err(e) => return internal(e),
    }
    for desc in manifest.blobs() {
        let present = match st.reg.repo_has_blob(name, &desc.digest) {
            Ok(p) => p && st.reg.blob_store().size(&desc.digest) == Some(desc.size),
            Err(e) => return internal(e),
        };
        if !present {
            return oci_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestBlobUnknown,
                &format!(
                    "blob {} of {} bytes is not uploaded to {name}",
                    desc.digest, desc.size
                ),
            );
        }
    }
    let d = match st
        .reg
        .attach(name, body, &subject, tag)
        .and_then(|d| st.reg.note_repo_blob(name, &d).map(|()| d))
    {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    tracing::info!(
        "attached {} {d} to {name}@{subject}",
        manifest.artifact_type()
    );
    let mut headers = vec![
        ("Location", format!("/v2/{name}/manifests/{d}")),
        ("Docker-Content-Digest", d.to_string()),
    ];
    if manifest.subject.is_some() {
        headers.push(("OCI-Subject", subject.to_string()));
    }
    let mut r = StatusCode::CREATED.into_response();
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// The attached artifact a reference names in repository `name`: a cosign-scheme tag,
/// or a digest.
#[allow(clippy::result_large_err)] // the error is the ready response
pub(super) fn find(
    st: &ServerState,
    name: &str,
    reference: &str,
) -> Result<Option<Digest>, Response> {
    let found: crate::Result<Option<Referrer>> = match reference.parse::<Digest>() {
        Ok(d) => st.reg.referrer(&d),
        Err(_) => st.reg.referrer_by_tag(name, reference),
    };
    match found {
        Ok(r) => Ok(r
            .filter(|r| r.repositories.contains_key(name))
            .map(|r| r.digest)),
        Err(e) => Err(internal(e)),
    }
}

/// DELETE of an attached artifact (by its tag or digest) from repository `name`.
pub(super) fn delete_attached(st: &ServerState, name: &str, d: &Digest) -> Response {
    match st.reg.detach(name, d) {
        Ok(true) => {
            tracing::info!("detached {d} from {name}");
            StatusCode::ACCEPTED.into_response()
        }
        Ok(false) => oci_error(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            &format!("{name}@{d} is not known"),
        ),
        Err(e) => internal(e),
    }
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=T]`: an image index of the
/// artifacts attached to `<digest>` in `name` (empty when there are none: the API never
/// answers 404), filtered by artifact type when asked (`OCI-Filters-Applied`).
pub(super) fn referrers(st: &ServerState, name: &str, digest: &str, uri: &Uri) -> Response {
    let Ok(subject) = digest.parse::<Digest>() else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "invalid digest",
        );
    };
    let all = match st.reg.referrers(&subject) {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let filter = query(uri, "artifactType");
    // As the spec says: the manifests whose `subject` is the digest (cosign's tag
    // scheme, without a subject, is read by its tag).
    let manifests = all
        .iter()
        .filter(|r| r.repositories.contains_key(name) && r.manifest.subject.is_some())
        .filter(|r| {
            filter
                .as_deref()
                .is_none_or(|t| r.manifest.artifact_type() == t)
        })
        .map(Referrer::descriptor)
        .collect();
    let body = serde_json::to_vec(&ImageIndex::of(manifests)).expect("index serialises");
    let mut r = (StatusCode::OK, [("Content-Type", INDEX_MEDIA_TYPE)], body).into_response();
    if filter.is_some() {
        r.headers_mut().insert(
            "OCI-Filters-Applied",
            axum::http::HeaderValue::from_static("artifactType"),
        );
    }
    r
}
