//! Signed bundles: cosign's key-based format, checked across implementations (Python's
//! `cryptography` + `pynacl` in tests/cosign_independent.py, written from cosign's
//! spec), carried by push and pull through Debian's `docker-registry` and `vmt-hub
//! serve`, required by `pull --verify-key` before anything is stored, kept by `gc`
//! while the bundle lives.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::servers::{distribution, servers, vmt_serve, Kind, Server};
use common::{fixtures, ok, vmt_hub_env};
use vmt_registry::sign::cosign::{
    payload, signature_artifact, CosignSignature, COSIGN_SIG_ARTIFACT_TYPE,
    IMAGE_CONFIG_MEDIA_TYPE, SIGNATURE_ANNOTATION,
};
use vmt_registry::sign::keys::SigningKey;
use vmt_registry::store::signature_tag;
use vmt_registry::{Digest, Registry};

const PASSWORD: &str = "correct horse";

/// Python with `cryptography` and `pynacl`, if here (see `common::tool_available`).
fn python_with_cryptography() -> Option<String> {
    common::python_with(
        "cryptography and pynacl",
        "import cryptography, nacl.secret",
        "cryptography pynacl",
    )
}

fn independent(python: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cosign_independent.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "cosign_independent.py {args:?}: {stdout}{stderr}"
    );
    stdout
}

/// vmt-hub with the key passphrase in $COSIGN_PASSWORD; stdout, or a panic with stderr.
fn with_password(root: &Path, args: &[&str]) -> String {
    let out = vmt_hub_env(root, args, &[("COSIGN_PASSWORD", PASSWORD)]);
    assert!(
        out.status.success(),
        "vmt-hub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A registry at `root` holding the tiny fixture bundle as `team/seg:v1`; its digest.
fn imported(root: &Path) -> Digest {
    let dir = fixtures().join("tiny/bundle");
    ok(
        root,
        &["import", dir.to_str().unwrap(), "--tag", "team/seg:v1"],
    );
    Registry::open(root)
        .unwrap()
        .resolve("team/seg:v1")
        .unwrap()
}

/// Every file under blobs/, tags/ and referrers/ with its content's digest: what a
/// refused pull must leave as it was.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Digest> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Digest>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), Digest::of(&std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for dir in ["blobs", "tags", "referrers"] {
        walk(&root.join(dir), &mut out);
    }
    out
}

fn remote(server: &Server, repo_tag: &str) -> String {
    format!("oci://127.0.0.1:{}/{repo_tag}", server.port)
}

/// Must-show 1 and 4: a signature vmt-hub makes is cosign's format, as an independent
/// implementation reads it from the `sha256-<hex>.sig` tag of docker-registry and of
/// serve; signing leaves the bundle's digest as it was; a pull from each with
/// `--verify-key` stores the bundle and its signature.
#[test]
fn a_vmt_hub_signature_is_cosigns_format_and_travels_with_the_bundle() {
    let Some(python) = python_with_cryptography() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let d = imported(&a);
    let key = tmp.path().join("team");
    let k = key.to_str().unwrap();
    with_password(&a, &["key", "generate", "--out", k]);
    let pem = std::fs::read_to_string(key.with_extension("key")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
        "{pem}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key.with_extension("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (private, public) = (format!("{k}.key"), format!("{k}.pub"));
    let out = with_password(&a, &["sign", "team/seg:v1", "--key", &private]);
    assert!(out.contains("1 signature(s)"), "{out}");
    assert_eq!(
        Registry::open(&a).unwrap().resolve("team/seg:v1").unwrap(),
        d,
        "signing does not change the bundle's digest"
    );
    let show = ok(&a, &["show", "team/seg:v1"]);
    assert!(show.contains("signatures: 1"), "{show}");
    ok(&a, &["verify", "team/seg:v1", "--key", &public]);
    for server in servers(tmp.path()) {
        let kind = format!("{:?}", server.kind);
        let base = format!("http://127.0.0.1:{}", server.port);
        let pushed = ok(
            &a,
            &["push", "team/seg:v1", &remote(&server, "team/seg:v1")],
        );
        assert!(
            pushed.contains("1 signature(s) on the remote"),
            "{kind}: {pushed}"
        );
        let verified = independent(
            &python,
            &["verify", &base, "team/seg", &d.to_string(), &public],
        );
        assert!(verified.contains("VERIFIED team/seg"), "{kind}: {verified}");
        let b = tmp.path().join(format!("b-{kind}"));
        let out = ok(
            &b,
            &[
                "pull",
                &remote(&server, "team/seg:v1"),
                "--verify-key",
                &public,
            ],
        );
        assert!(
            out.contains("verified: signed by key sha256:"),
            "{kind}: {out}"
        );
        let show = ok(&b, &["show", "team/seg:v1"]);
        assert!(show.contains("signatures: 1"), "{kind}: {show}");
        ok(&b, &["verify", "--key", &public]);
        if server.kind == Kind::VmtServe {
            referrers_carry_the_signature_too(&base, &server, &d, &public, tmp.path());
        }
    }
}

/// Where the remote answers the referrers API (serve does, distribution 2.8 does not),
/// the push attached the signature with a subject as cosign's OCI 1.1 mode does, and
/// a pull that finds no `.sig` tag reads it from there.
fn referrers_carry_the_signature_too(
    base: &str,
    server: &Server,
    d: &Digest,
    public: &str,
    tmp: &Path,
) {
    let url = format!(
        "{base}/v2/team/seg/referrers/{d}?artifactType={}",
        COSIGN_SIG_ARTIFACT_TYPE.replace('+', "%2B")
    );
    let index: serde_json::Value = ureq::get(&url).call().unwrap().into_json().unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    let gone = ureq::delete(&format!(
        "{base}/v2/team/seg/manifests/{}",
        signature_tag(d)
    ))
    .call()
    .unwrap();
    assert_eq!(gone.status(), 202);
    let c = tmp.join("from-referrers");
    let out = ok(
        &c,
        &[
            "pull",
            &remote(server, "team/seg:v1"),
            "--verify-key",
            public,
        ],
    );
    assert!(out.contains("verified: signed by key"), "{out}");
    let reg = Registry::open(&c).unwrap();
    let attached = reg.referrers(d).unwrap();
    assert_eq!(attached.len(), 1);
    assert_eq!(
        attached[0].manifest.subject.as_ref().map(|s| s.digest),
        Some(*d)
    );
}

/// Must-show 1: a key and a signature made by the independent implementation (cosign's
/// encrypted key format with `cryptography`, `pynacl` and `hashlib.scrypt`) are
/// accepted: vmt-hub signs with that key, and pulls a bundle that Python signed.
#[test]
fn keys_and_signatures_of_an_independent_implementation_are_accepted() {
    let Some(python) = python_with_cryptography() else {
        return;
    };
    if common::docker_registry().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = distribution(tmp.path(), None);
    let base = format!("http://127.0.0.1:{}", server.port);
    let a = tmp.path().join("a");
    let d = imported(&a);
    let key = tmp.path().join("py");
    let k = key.to_str().unwrap();
    independent(&python, &["make-key", k, PASSWORD]);
    let (private, public) = (format!("{k}.key"), format!("{k}.pub"));
    with_password(&a, &["sign", "team/seg:v1", "--key", &private]);
    ok(&a, &["verify", "team/seg:v1", "--key", &public]);
    // An unsigned bundle pushed, then signed by Python alone.
    ok(&a, &["push", "team/seg:v1", &remote(&server, "py/seg:v1")]);
    let identity = format!("127.0.0.1:{}/py/seg", server.port);
    let out = independent(
        &python,
        &[
            "sign-push",
            &base,
            "py/seg",
            &d.to_string(),
            &private,
            PASSWORD,
            &identity,
        ],
    );
    assert!(out.contains("PUSHED"), "{out}");
    let b = tmp.path().join("b");
    let out = ok(
        &b,
        &[
            "pull",
            &remote(&server, "py/seg:v1"),
            "--verify-key",
            &public,
        ],
    );
    assert!(out.contains("verified: signed by key"), "{out}");
    let stranger = SigningKey::generate();
    let other = tmp.path().join("other.pub");
    std::fs::write(&other, stranger.public().to_pem()).unwrap();
    let c = tmp.path().join("c");
    common::fails(
        &c,
        &[
            "pull",
            &remote(&server, "py/seg:v1"),
            "--verify-key",
            other.to_str().unwrap(),
        ],
        &["no valid signature", "not signed by any of the keys"],
    );
}

/// Pushes `signatures` of bundle `d` to `repo` on `base` as its `sha256-<hex>.sig`,
/// with `edit` applied to the manifest JSON first.
fn push_signatures(
    base: &str,
    repo: &str,
    d: &Digest,
    signatures: &[CosignSignature],
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let art = signature_artifact(signatures);
    for blob in std::iter::once(&art.config).chain(&art.payloads) {
        let bd = Digest::of(blob);
        ureq::post(&format!("{base}/v2/{repo}/blobs/uploads/?digest={bd}"))
            .send_bytes(blob)
            .unwrap();
    }
    let mut m: serde_json::Value = serde_json::from_slice(&art.manifest).unwrap();
    edit(&mut m);
    ureq::put(&format!("{base}/v2/{repo}/manifests/{}", signature_tag(d)))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_bytes(&serde_json::to_vec(&m).unwrap())
        .unwrap();
}

/// Must-show 2: `pull --verify-key` stores a correctly signed bundle, and refuses,
/// naming why and the keys tried, one that is unsigned, signed by another key, signed
/// over another digest, whose payload was edited, or whose annotation is missing;
/// after each refusal the local registry is exactly as it was. A containers-policy.json
/// trust policy gives the same answers.
#[test]
fn pull_verify_key_refuses_each_bad_signature_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = vmt_serve(tmp.path(), &[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let a = tmp.path().join("a");
    let d = imported(&a);
    let key = SigningKey::generate();
    let public = tmp.path().join("team.pub");
    std::fs::write(&public, key.public().to_pem()).unwrap();
    let public = public.to_str().unwrap();
    let good = CosignSignature::new(&key, "team/seg", &d);
    let edited = CosignSignature {
        payload: payload("team/evil", &d),
        ..good.clone()
    };
    let cases: Vec<(&str, Vec<CosignSignature>, bool, &str)> = vec![
        ("unsigned", vec![], false, "no signature"),
        (
            "stranger",
            vec![CosignSignature::new(
                &SigningKey::generate(),
                "team/seg",
                &d,
            )],
            false,
            "not signed by any of the keys",
        ),
        (
            "elsewhere",
            vec![CosignSignature::new(
                &key,
                "team/seg",
                &Digest::of(b"another bundle"),
            )],
            false,
            "over another manifest",
        ),
        (
            "edited",
            vec![edited],
            false,
            "not signed by any of the keys",
        ),
        (
            "bare",
            vec![good.clone()],
            true,
            "no dev.cosignproject.cosign/signature annotation",
        ),
        ("good", vec![good.clone()], false, ""),
    ];
    let b = tmp.path().join("b");
    ok(&b, &["gc"]);
    for (repo, sigs, strip, why) in cases {
        ok(
            &a,
            &[
                "push",
                "team/seg:v1",
                &format!("oci://127.0.0.1:{}/{repo}:v1", server.port),
            ],
        );
        if !sigs.is_empty() {
            push_signatures(&base, repo, &d, &sigs, |m| {
                if strip {
                    m["layers"][0]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove(SIGNATURE_ANNOTATION);
                }
                assert_eq!(m["config"]["mediaType"], IMAGE_CONFIG_MEDIA_TYPE);
            });
        }
        let before = snapshot(&b);
        let from = format!("oci://127.0.0.1:{}/{repo}:v1", server.port);
        if why.is_empty() {
            let out = ok(&b, &["pull", &from, "--verify-key", public]);
            assert!(
                out.contains(&key.public().fingerprint().to_string()),
                "{out}"
            );
            assert_ne!(snapshot(&b), before, "a verified pull stores the bundle");
        } else {
            let fp = key.public().fingerprint().to_string();
            common::fails(
                &b,
                &["pull", &from, "--verify-key", public],
                &[&from, why, &fp],
            );
            assert_eq!(
                snapshot(&b),
                before,
                "{repo}: a refused pull stores nothing"
            );
        }
    }
    // A signature manifest this registry would not store as it is (one more layer, of
    // another type): the pull verifies and succeeds, and keeps the signature as vmt-hub
    // writes it.
    ok(
        &a,
        &[
            "push",
            "team/seg:v1",
            &format!("oci://127.0.0.1:{}/odd:v1", server.port),
        ],
    );
    let extra = b"an extra layer";
    let extra_d = Digest::of(extra);
    ureq::post(&format!("{base}/v2/odd/blobs/uploads/?digest={extra_d}"))
        .send_bytes(extra)
        .unwrap();
    push_signatures(&base, "odd", &d, std::slice::from_ref(&good), |m| {
        let layer =
            serde_json::json!({"mediaType": "text/plain", "digest": extra_d, "size": extra.len()});
        m["layers"].as_array_mut().unwrap().push(layer);
    });
    let odd = tmp.path().join("odd");
    let out = ok(
        &odd,
        &[
            "pull",
            &format!("oci://127.0.0.1:{}/odd:v1", server.port),
            "--verify-key",
            public,
        ],
    );
    assert!(out.contains("verified: signed by key"), "{out}");
    let show = ok(&odd, &["show", "odd:v1"]);
    assert!(show.contains("signatures: 1"), "{show}");
    // The same rules from a trust policy (containers-policy.json): the signed
    // repository needs the key, and a signature for its name (signedIdentity, as
    // containers/image checks it); everything else is rejected.
    let host = format!("127.0.0.1:{}", server.port);
    ok(
        &a,
        &["push", "team/seg:v1", &format!("oci://{host}/policed:v1")],
    );
    let named = CosignSignature::new(&key, &format!("{host}/policed"), &d);
    push_signatures(&base, "policed", &d, &[named], |_| {});
    let policy = tmp.path().join("policy.json");
    let signed_by = r#"[{"type":"sigstoreSigned","keyPath":"team.pub","signedIdentity":{"type":"matchRepository"}}]"#;
    let by_default = r#"[{"type":"sigstoreSigned","keyPath":"team.pub"}]"#;
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{
                "{host}/policed":{signed_by}, "{host}/stranger":{signed_by},
                "{host}/good":{signed_by}, "{host}/elsewhere":{by_default}}}}}}}"#
        ),
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let c = tmp.path().join("c");
    let pull = |repo: &str| format!("oci://{host}/{repo}:v1");
    let out = ok(&c, &["pull", &pull("policed"), "--policy", p]);
    assert!(out.contains("verified: signed by key"), "{out}");
    let refused =
        |repo: &str, why: &[&str]| common::fails(&c, &["pull", &pull(repo), "--policy", p], why);
    // `good` is signed by the key, but for `team/seg`, not for this repository.
    refused("good", &["identity the trust policy requires", "team/seg"]);
    // containers' default identity (matchRepoDigestOrExact) wants HOST/REPO:TAG exactly.
    refused("elsewhere", &["identity the trust policy requires"]);
    refused("stranger", &["identity the trust policy requires"]);
    refused("unsigned", &["refused by the trust policy", "policy.json"]);
}

/// Must-show 4: `gc` keeps the signatures of a live bundle and frees them with it.
#[test]
fn gc_keeps_signatures_of_live_bundles_and_frees_those_of_removed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let d = imported(&a);
    let key = tmp.path().join("k");
    with_password(&a, &["key", "generate", "--out", key.to_str().unwrap()]);
    with_password(
        &a,
        &[
            "sign",
            "team/seg:v1",
            "--key",
            key.with_extension("key").to_str().unwrap(),
        ],
    );
    let sig_manifest = {
        let reg = Registry::open(&a).unwrap();
        let r = reg.referrers(&d).unwrap();
        assert_eq!(r.len(), 1);
        r[0].digest
    };
    let gc = ok(&a, &["gc", "--now"]);
    assert!(
        Registry::open(&a).unwrap().has_blob(&sig_manifest),
        "kept: {gc}"
    );
    ok(&a, &["rm", "team/seg:v1"]);
    ok(&a, &["gc", "--now"]);
    let reg = Registry::open(&a).unwrap();
    assert!(!reg.has_blob(&sig_manifest));
    assert!(reg.referrers(&d).unwrap().is_empty());
    assert!(!a.join("referrers").join(d.hex()).exists());
}

/// Python with OpenSSF's `model_signing` 1.x (and `pyopenssl`, which it imports), if
/// here (see `common::tool_available`).
fn python_with_model_signing() -> Option<String> {
    common::python_with(
        "model_signing",
        "import model_signing, OpenSSL",
        "model-signing==1.1.1 pyopenssl",
    )
}

/// `python -m model_signing verify key` on `dir`: whether it accepts, and what it said.
fn model_signing_verify(python: &str, dir: &Path, public: &str) -> (bool, String) {
    let sig = dir.join("model.sig");
    let out = Command::new(python)
        .args(["-m", "model_signing", "verify", "key"])
        .arg(dir)
        .arg("--signature")
        .arg(&sig)
        .args(["--public_key", public])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Must-show 3: OpenSSF's `model_signing verify key` accepts a folder that `export
/// --sign` wrote, and rejects it once one byte of adapter.safetensors changes;
/// `import --verify-key` agrees on both, and imports nothing from the changed folder.
#[test]
fn model_signing_accepts_a_signed_export_until_a_byte_changes() {
    let Some(python) = python_with_model_signing() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    imported(&a);
    let key = tmp.path().join("team");
    let k = key.to_str().unwrap();
    with_password(&a, &["key", "generate", "--out", k]);
    let (private, public) = (format!("{k}.key"), format!("{k}.pub"));
    let dir = tmp.path().join("exported");
    let d = dir.to_str().unwrap();
    let out = with_password(&a, &["export", "team/seg:v1", d, "--sign", &private]);
    assert!(out.contains("signed:"), "{out}");
    let (accepted, said) = model_signing_verify(&python, &dir, &public);
    assert!(
        accepted,
        "model_signing refused vmt-hub's signature: {said}"
    );
    let b = tmp.path().join("b");
    let out = ok(
        &b,
        &["import", d, "--tag", "team/seg:v1", "--verify-key", &public],
    );
    assert!(out.contains("signed by key sha256:"), "{out}");

    let adapter = dir.join("adapter.safetensors");
    let mut bytes = std::fs::read(&adapter).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&adapter, bytes).unwrap();
    let (accepted, said) = model_signing_verify(&python, &dir, &public);
    assert!(!accepted, "model_signing accepted a changed file: {said}");
    let c = tmp.path().join("c");
    common::fails(
        &c,
        &["import", d, "--tag", "team/seg:v1", "--verify-key", &public],
        &["model.sig", "adapter.safetensors changed"],
    );
    assert!(
        !c.join("blobs").exists() || snapshot(&c).is_empty(),
        "nothing imported"
    );
}
