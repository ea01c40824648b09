#!/usr/bin/env python3
"""An independent implementation of cosign's key-based signatures, written from
cosign's formats (sigstore/cosign pkg/cosign, sigstore/sigstore payload, and
go-securesystemslib's encrypted keys) with Python's `cryptography` and `pynacl`: the
other side of tests/signing.rs. It shares no code with vmt-hub.

  verify BASE REPO DIGEST PUB       fetch REPO's sha256-<hex>.sig from the registry at
                                    BASE and check every layer as `cosign verify --key`
  make-key OUT PASSWORD             write OUT.key (ENCRYPTED SIGSTORE PRIVATE KEY) and OUT.pub
  sign-push BASE REPO DIGEST KEY PASSWORD IDENTITY
                                    sign DIGEST with KEY and push cosign's signature
                                    manifest to REPO's sha256-<hex>.sig
"""
import base64
import hashlib
import json
import os
import sys
import urllib.request

import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def sig_tag(digest):
    algo, hexd = digest.split(":")
    return f"{algo}-{hexd}.sig"


def verify(base, repo, digest, pub_path):
    pub = serialization.load_pem_public_key(open(pub_path, "rb").read())
    _, headers, body = http(
        "GET", f"{base}/v2/{repo}/manifests/{sig_tag(digest)}", headers={"Accept": OCI_MANIFEST}
    )
    manifest = json.loads(body)
    assert manifest["schemaVersion"] == 2, manifest
    assert manifest["mediaType"] == OCI_MANIFEST, manifest
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json", manifest
    layers = manifest["layers"]
    assert layers, "no signature layer"
    for layer in layers:
        assert layer["mediaType"] == SIMPLESIGNING, layer
        _, _, payload = http("GET", f"{base}/v2/{repo}/blobs/{layer['digest']}")
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
        # The payload exactly as cosign serialises it (Go struct order, compact).
        doc = json.loads(payload)
        assert list(doc) == ["critical", "optional"], doc
        assert list(doc["critical"]) == ["identity", "image", "type"], doc
        assert doc["critical"]["type"] == "cosign container image signature", doc
        assert doc["critical"]["image"] == {"docker-manifest-digest": digest}, doc
        assert doc["optional"] is None, doc
        assert json.dumps(doc, separators=(",", ":")).encode() == payload, payload
        signature = base64.b64decode(layer["annotations"][ANNOTATION])
        pub.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        print("VERIFIED", doc["critical"]["identity"]["docker-reference"])


def make_key(out, password):
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, nonce = os.urandom(32), os.urandom(24)
    secret = hashlib.scrypt(password.encode(), salt=salt, n=32768, r=8, p=1, maxmem=64 << 20, dklen=32)
    ciphertext = nacl.secret.SecretBox(secret).encrypt(der, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode()
    body = json.dumps(
        {
            "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
            "ciphertext": b64(ciphertext),
        },
        separators=(",", ":"),
    ).encode()
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    pem = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + "\n".join(lines)
    pem += "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    open(out + ".key", "w").write(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    open(out + ".pub", "wb").write(pub)


def load_key(path, password):
    pem = open(path).read()
    body = "".join(l for l in pem.splitlines() if not l.startswith("-----"))
    doc = json.loads(base64.b64decode(body))
    p = doc["kdf"]["params"]
    salt = base64.b64decode(doc["kdf"]["salt"])
    secret = hashlib.scrypt(password.encode(), salt=salt, n=p["N"], r=p["r"], p=p["p"], maxmem=256 << 20, dklen=32)
    nonce = base64.b64decode(doc["cipher"]["nonce"])
    der = nacl.secret.SecretBox(secret).decrypt(base64.b64decode(doc["ciphertext"]), nonce)
    return serialization.load_der_private_key(der, password=None)


def upload(base, repo, blob):
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _, headers, _ = http("POST", f"{base}/v2/{repo}/blobs/uploads/", b"")
    location = headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    http("PUT", f"{location}{sep}digest={digest}", blob, {"Content-Type": "application/octet-stream"})
    return {"mediaType": "", "size": len(blob), "digest": digest}


def sign_push(base, repo, digest, key_path, password, identity):
    key = load_key(key_path, password)
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": identity},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    payload_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    config_desc = upload(base, repo, config)
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    layer = upload(base, repo, payload)
    layer["mediaType"] = SIMPLESIGNING
    layer["annotations"] = {ANNOTATION: signature}
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer]},
        separators=(",", ":"),
    ).encode()
    http("PUT", f"{base}/v2/{repo}/manifests/{sig_tag(digest)}", manifest, {"Content-Type": OCI_MANIFEST})
    print("PUSHED", sig_tag(digest))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"verify": verify, "make-key": make_key, "sign-push": sign_push}[cmd](*args)
