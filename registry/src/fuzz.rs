//! One entry point per parser of bytes that come from a file or a peer, for the fuzz
//! targets in `fuzz/` (libFuzzer, through `cargo fuzz`) and for the test that replays
//! their corpora on stable Rust. Each takes arbitrary bytes and checks what must hold
//! whatever they are: no panic, and what parses re-serialises to bytes that parse to
//! the same value (so a stored or exported value never changes on a round trip).

use std::path::Path;

use crate::bundle::dir::parse_config;
use crate::oci::{canonical_json, Manifest};
use crate::reference::{Reference, TagName};
use crate::remote::RemoteRef;
use crate::safetensors_canon::{canonical_bytes, parse};

fn text(data: &[u8]) -> &str {
    std::str::from_utf8(data).unwrap_or("")
}

/// safetensors bytes: what parses, written canonically, parses to the same tensors.
pub fn safetensors(data: &[u8]) {
    if let Ok(tensors) = parse(data, Path::new("fuzz")) {
        let again = parse(&canonical_bytes(&tensors), Path::new("canonical"))
            .expect("canonical bytes parse");
        assert_eq!(again, tensors);
    }
}

/// `bundle.json`: a config that validates round-trips through its stored JSON (the
/// canonical form the registry hashes) to an equal config and the same bytes.
pub fn bundle_config(data: &[u8]) {
    if let Ok(config) = parse_config(data, Path::new("fuzz")) {
        let stored = canonical_json(&serde_json::to_value(&config).expect("serialises"));
        let again = parse_config(&stored, Path::new("stored")).expect("stored config parses");
        assert_eq!(again, config);
        let restored = canonical_json(&serde_json::to_value(&again).expect("serialises"));
        assert_eq!(restored, stored, "the stored bytes changed on a round trip");
    }
}

/// An OCI manifest: what parses round-trips through its canonical bytes.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        let again = Manifest::parse(&m.to_canonical_bytes()).expect("canonical manifest parses");
        assert_eq!(again, m);
    }
}

/// A tag file and a tag history (`tags.log`).
pub fn tag_record(data: &[u8]) {
    if let Ok((tag, _)) = crate::store::parse_tag_file(data, Path::new("fuzz")) {
        assert_eq!(TagName::parse(&tag).expect("valid").to_string(), tag);
    }
    for e in crate::store::parse_history(data, Path::new("fuzz")) {
        let line = serde_json::to_vec(&e).expect("serialises");
        let again = crate::store::parse_history(&line, Path::new("line"));
        assert_eq!(again, vec![e]);
    }
}

/// Local references (`name:tag`, digests, prefixes) and `oci://` references: what
/// parses prints as text that parses to the same value.
pub fn reference(data: &[u8]) {
    let s = text(data);
    if let Ok(t) = TagName::parse(s) {
        assert_eq!(
            TagName::parse(&t.to_string()).expect("printed tag parses"),
            t
        );
    }
    let _ = Reference::parse(s);
    if let Ok(r) = RemoteRef::parse(s, false) {
        let printed = format!(
            "oci://{}/{}{}",
            r.host,
            r.repo,
            match &r.reference {
                crate::remote::RemoteTarget::Tag(t) => format!(":{t}"),
                crate::remote::RemoteTarget::Digest(d) => format!("@{d}"),
            }
        );
        assert_eq!(
            RemoteRef::parse(&printed, false).expect("printed ref parses"),
            r
        );
    }
}

/// A `WWW-Authenticate` challenge (client): every parameter value is a substring of the
/// header; an `Authorization` header (`serve`): only the token itself passes.
pub fn www_authenticate(data: &[u8]) {
    let s = text(data);
    if crate::remote::server::authorized(Some(s), "tok") {
        assert!(s.contains("tok") || s.starts_with("Basic "), "{s:?}");
    }
    let (scheme, params) = crate::remote::client::parse_challenge(s);
    assert!(s.to_ascii_lowercase().starts_with(&scheme));
    for (k, v) in params {
        assert!(s.contains(&k) && s.contains(&v), "{k}={v} not in {s:?}");
    }
}

/// `Content-Range` (server), `Range` on a blob GET (server) and an upload's `Range`
/// (client).
pub fn content_range(data: &[u8]) {
    let s = text(data);
    for size in [0, 1, 100, u64::MAX] {
        if let Some(Ok((a, b))) = crate::remote::server::blob_range(Some(s), size) {
            assert!(a <= b && b < size, "{a}-{b} of {size} from {s:?}");
        }
    }
    if let Some(Some((a, b))) = crate::remote::server::parse_content_range(s) {
        assert!(s.contains(&a.to_string()) && s.contains(&b.to_string()));
    }
    if let Some(end) = crate::remote::transfer::range_end(s) {
        assert!(s.contains(&(end - 1).to_string()), "{end} from {s:?}");
    }
}

/// A request path of `serve`: whatever it names lies inside the path (the handler
/// then checks the name's grammar).
pub fn serve_path(data: &[u8]) {
    let s = text(data);
    if let Some(route) = crate::remote::server::route(s) {
        assert!(s.starts_with("/v2"), "{route:?} from {s:?}");
        if let Some(name) = route.name() {
            assert!(s.contains(name), "{route:?} from {s:?}");
            let _ = crate::reference::valid_name(name);
        }
    }
}

/// A credentials file (containers' auth.json, docker's config.json): keys and logins
/// decode without panicking and round-trip (credential helpers are not run).
pub fn auth_file(data: &[u8]) {
    crate::remote::logins::fuzz_auth_file(data);
}

/// What signing reads from files and peers: cosign key files (PEM, cosign's encrypted
/// JSON; the passphrase is refused, so no scrypt runs), public keys, attached artifact
/// manifests, trust policies and `model.sig` (envelope, statement). A public key that parses, written as PEM, parses to
/// the same key; an artifact manifest that parses round-trips through its JSON.
pub fn signature_files(data: &[u8]) {
    use crate::sign::keys::{PublicKey, SigningKey};
    let t = text(data);
    let refused = || {
        Err(crate::Error::Key {
            origin: "fuzz".into(),
            reason: "no passphrase".into(),
        })
    };
    let _ = SigningKey::from_pem(t, "fuzz", refused);
    if let Ok(k) = PublicKey::from_pem(t, "fuzz") {
        let again = PublicKey::from_pem(&k.to_pem(), "again").expect("written key parses");
        assert_eq!(again, k);
    }
    if let Ok(m) = crate::oci::ArtifactManifest::parse(data) {
        let bytes = serde_json::to_vec(&m).expect("serialises");
        let again = crate::oci::ArtifactManifest::parse(&bytes).expect("written manifest parses");
        assert_eq!(again, m);
        let _ = m.artifact_type();
    }
    if let Ok((payload, _)) = crate::sign::model::read_envelope(data) {
        let _ = crate::sign::model::signed_files(&payload);
    }
    let _ = crate::sign::model::signed_files(data);
    if let Ok(p) = crate::sign::policy::Policy::parse(data, Path::new("/nonexistent/policy.json")) {
        let _ = p.trust_for("reg:5000", "team/seg", "v1");
    }
}

/// A fuzz target: its name (its folder under `fuzz/seeds/` and `fuzz/corpus/`) and its
/// entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this crate.
pub const TARGETS: &[Target] = &[
    ("safetensors", safetensors),
    ("bundle_config", bundle_config),
    ("manifest", manifest),
    ("tag_record", tag_record),
    ("reference", reference),
    ("www_authenticate", www_authenticate),
    ("content_range", content_range),
    ("serve_path", serve_path),
    ("auth_file", auth_file),
    ("signature_files", signature_files),
];
