#!/usr/bin/env bash
# Writes the seed corpus of every fuzz target from the repository's fixtures (run from
# the repository root after `cargo build`; the seeds are committed under fuzz/seeds/).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VMT_BIN:-target/debug/vmt-hub}
seeds=fuzz/seeds
rm -rf "$seeds" && mkdir -p "$seeds"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A registry holding the two fixture bundles: its manifests, tag files and history.
"$bin" --registry "$tmp/reg" import tests/fixtures/tiny/bundle --tag team/tiny:v1 >/dev/null
"$bin" --registry "$tmp/reg" import tests/fixtures/tiny-lite/bundle --tag lite:v1 >/dev/null
"$bin" --registry "$tmp/reg" rm lite:v1 >/dev/null
mkdir -p $seeds/{safetensors,bundle_config,manifest,tag_record,reference,www_authenticate,content_range,serve_path,auth_file,signature_files,mat,npy}
for f in "$tmp"/reg/blobs/sha256/*; do
  if grep -q schemaVersion "$f"; then cp "$f" $seeds/manifest/; fi
done
# The three smallest safetensors components (task heads): 8-byte length, then JSON.
python3 - "$tmp/reg/blobs/sha256" "$seeds/safetensors" <<'PY'
import os, shutil, sys
src, dst = sys.argv[1:]
blobs = [os.path.join(src, f) for f in os.listdir(src)]
st = [b for b in blobs if open(b, "rb").read(9)[8:9] == b"{"]
for b in sorted(st, key=os.path.getsize)[:3]:
    shutil.copy(b, dst)
PY
cp "$tmp"/reg/tags/* $seeds/tag_record/
cp "$tmp"/reg/tags.log $seeds/tag_record/history
cp tests/fixtures/tiny/bundle/bundle.json $seeds/bundle_config/tiny.json
cp tests/fixtures/tiny-lite/bundle/bundle.json $seeds/bundle_config/lite.json
cp tests/fixtures/mat/*.mat $seeds/mat/
cp tests/fixtures/replicas/expected/pascal-context/normals/2008_000001.npy $seeds/npy/normals.npy
find tests/fixtures/replicas -name '*.npy' -size -4k | grep -v normals | head -2 | while read -r f; do cp "$f" "$seeds/npy/$(basename "$(dirname "$f")")-$(basename "$f")"; done
i=0
seed() { printf '%s' "$2" > "$seeds/$1/$i"; i=$((i + 1)); }
for s in 'team/tiny:v1' 'a:latest' 'sha256:86215f694695dbfe3757abe37b97929fa146f4df8349a167b388a757d83d3f8a' \
  'team/tiny@sha256:86215f694695dbfe3757abe37b97929fa146f4df8349a167b388a757d83d3f8a' '86215f' \
  'oci://localhost:5000/team/vmt:v1' 'oci://registry.example.com/a/b@sha256:86215f694695dbfe3757abe37b97929fa146f4df8349a167b388a757d83d3f8a'; do
  seed reference "$s"; done
for s in 'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"' \
  'Basic realm="Registry Realm"' 'Bearer realm=https://x/token,service=y' 'Bearer realm="vmt-hub",error="invalid_token"' \
  'Basic eDp0b2s=' 'Bearer tok'; do
  seed www_authenticate "$s"; done
for s in 'bytes 0-1023/2048' '0-9' 'bytes=10-19' '0-0' '5-' 'bytes=10-99' 'bytes=-5' 'bytes=3-'; do
  seed content_range "$s"; done
for s in '/v2/' '/v2/_catalog' '/v2/team/vmt/tags/list' '/v2/team/vmt/manifests/v1' \
  '/v2/team/vmt/blobs/uploads/' '/v2/team/vmt/blobs/uploads/3f1c-9a' \
  '/v2/team/vmt/blobs/sha256:86215f694695dbfe3757abe37b97929fa146f4df8349a167b388a757d83d3f8a' \
  '/v2/a/manifests/sha256:86215f694695dbfe3757abe37b97929fa146f4df8349a167b388a757d83d3f8a'; do
  seed serve_path "$s"; done
for s in '{"auths": {"localhost:5000": {"auth": "YWxpY2U6czNjcmV0"}}}' \
  '{"auths": {"reg.example:5000/team/vmt": {"auth": "dGVhbTpw"}, "https://index.docker.io/v1/": {"auth": "eDp5"}}, "credsStore": "desktop"}' \
  '{"auths": {"ghcr.io": {"username": "me", "password": "tok"}}, "credHelpers": {"gcr.io": "gcloud"}}' '{}'; do
  seed auth_file "$s"; done
find $seeds -type f | wc -l
# Signing: a key pair in cosign's format, a signature manifest, a trust policy.
COSIGN_PASSWORD=seed "$bin" key generate --out "$tmp/seed" >/dev/null
cp "$tmp/seed.key" $seeds/signature_files/cosign.key
cp "$tmp/seed.pub" $seeds/signature_files/cosign.pub
COSIGN_PASSWORD=seed "$bin" --registry "$tmp/reg" sign team/tiny:v1 --key "$tmp/seed.key" >/dev/null
for f in "$tmp"/reg/blobs/sha256/*; do
  if grep -q simplesigning "$f"; then cp "$f" $seeds/signature_files/signature-manifest.json; fi
done
cat > $seeds/signature_files/policy.json <<'JSON'
{"default":[{"type":"reject"}],"transports":{"docker":{"reg:5000/team":[{"type":"sigstoreSigned","keyData":"","signedIdentity":{"type":"matchRepository"}}],"":[{"type":"insecureAcceptAnything"}]}}}
JSON
COSIGN_PASSWORD=seed "$bin" --registry "$tmp/reg" export team/tiny:v1 "$tmp/exported" --sign "$tmp/seed.key" >/dev/null
cp "$tmp/exported/model.sig" $seeds/signature_files/model.sig
python3 -c 'import base64, json, sys; sys.stdout.buffer.write(base64.b64decode(json.load(open(sys.argv[1]))["dsseEnvelope"]["payload"]))' \
  "$tmp/exported/model.sig" > $seeds/signature_files/statement.json
