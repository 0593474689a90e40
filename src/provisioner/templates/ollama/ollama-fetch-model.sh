#!/bin/sh
# ollama-fetch-model: place one model from an OCI registry into an Ollama model store.
# Installed by provisioner (templates/ollama/ollama-fetch-model.sh); run by the ollama.models
# operation, as root, once per model to fetch.
#
# usage: ollama-fetch-model MODELS_DIR OWNER BLOB_URL_PREFIX MANIFEST_DIGEST MANIFEST
#                           MANIFEST_PATH BLOB...
#   BLOB_URL_PREFIX  e.g. http://10.0.0.5:5000/v2/library/qwen2.5/blobs/
#   MANIFEST         the manifest's URL (http:// or https://), fetched here and checked against
#                    MANIFEST_DIGEST: a manifest never travels on the command line, whose
#                    arguments the kernel limits (MAX_ARG_STRLEN, 128 KiB each); or, for
#                    small manifests, their base64
#   MANIFEST_PATH    path under MODELS_DIR/manifests/ (host/namespace/model/tag)
#   BLOB             sha256:<64 hex>:<size>, every blob the manifest references
#
# Each blob is downloaded with curl (redirects followed, so a registry that answers 200 works
# as well as one that redirects), resumed from MODELS_DIR/.provisioner-tmp/ after an
# interruption, checked against its sha256 and only then moved into blobs/. The manifest is
# written last, so the server never sees a model whose blobs are incomplete. Progress is
# printed as Ollama's /api/pull prints it (NDJSON); a failure prints {"error": ...}, exits 1.
set -u

if [ "$#" -lt 7 ]; then
    echo '{"error":"usage: ollama-fetch-model MODELS_DIR OWNER URL DIGEST MANIFEST PATH BLOB..."}'
    exit 2
fi
models=$1 owner=$2 base=$3 mdigest=$4 msource=$5 mpath=$6
shift 6

fail() {
    printf '{"error":"%s"}\n' "$(printf '%s' "$*" | tr -d '"\\' | tr '\n\t' '  ')"
    exit 1
}
status() { printf '{"status":"%s"}\n' "$1"; }
progress() {
    printf '{"status":"pulling %s","digest":"%s","total":%s,"completed":%s}\n' "$1" "$2" "$3" "$4"
}
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

case "/$mpath/" in
    */../* | */./* | *//*) fail "bad manifest path $mpath" ;;
esac

tmp="$models/.provisioner-tmp"
mkdir -p "$models/blobs" "$models/manifests" "$tmp" || fail "cannot create directories in $models"
chown "$owner:" "$models" "$models/blobs" "$models/manifests" || fail "cannot chown $models to $owner"
chmod 700 "$tmp"

mfile="$tmp/manifest-$(printf '%s' "${mdigest#sha256:}" | tr -cd '0-9a-f')"
status "pulling manifest"
case "$msource" in
    http://* | https://*)
        curl -fsSL --retry 3 --connect-timeout 30 \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            -o "$mfile" "$msource" 2>"$mfile.err" ||
            fail "cannot fetch the manifest $msource: $(cat "$mfile.err" 2>/dev/null)"
        rm -f "$mfile.err"
        ;;
    *) printf '%s' "$msource" | base64 -d >"$mfile" || fail "manifest is not base64" ;;
esac
actual="sha256:$(sha256sum "$mfile" | cut -d' ' -f1)"
if [ "$actual" != "$mdigest" ]; then
    rm -f "$mfile"
    fail "manifest is $actual, expected $mdigest"
fi
for spec in "$@"; do
    digest=${spec%:*}
    size=${spec##*:}
    hex=${digest#sha256:}
    case "$hex" in "" | *[!0-9a-f]*) fail "bad digest $digest" ;; esac
    [ "${#hex}" -eq 64 ] || fail "bad digest $digest"
    case "$size" in "" | *[!0-9]*) fail "bad size $size for $digest" ;; esac
    short=$(printf %.12s "$hex")
    blob="$models/blobs/sha256-$hex"
    if [ -f "$blob" ] && [ "$(size_of "$blob")" = "$size" ]; then
        progress "$short" "$digest" "$size" "$size"
        continue
    fi
    part="$tmp/sha256-$hex"
    if [ "$(size_of "$part")" -gt "$size" ]; then rm -f "$part"; fi
    attempt=1
    while [ "$(size_of "$part")" -lt "$size" ] || [ ! -f "$part" ]; do
        progress "$short" "$digest" "$size" "$(size_of "$part")"
        curl -fsSL --retry 3 --retry-delay 2 --connect-timeout 30 -C - -o "$part" \
            "$base$digest" 2>"$part.err" &
        pid=$!
        shown=-1
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.2 2>/dev/null || sleep 1
            now=$(size_of "$part")
            if [ "$now" != "$shown" ]; then
                progress "$short" "$digest" "$size" "$now"
                shown=$now
            fi
        done
        if wait "$pid"; then
            rm -f "$part.err"
            break
        fi
        if [ "$attempt" -ge 2 ]; then
            fail "download of $digest from $base failed: $(cat "$part.err" 2>/dev/null)"
        fi
        # a registry that ignores Range (or a stale partial file): start this blob again
        rm -f "$part" "$part.err"
        attempt=$((attempt + 1))
    done
    status "verifying sha256 digest"
    actual=$(sha256sum "$part" | cut -d' ' -f1)
    if [ "$actual" != "$hex" ]; then
        rm -f "$part"
        fail "blob $digest does not match its digest (got sha256:$actual)"
    fi
    chown "$owner:" "$part" && chmod 644 "$part" && mv -f "$part" "$blob" ||
        fail "cannot move $digest into $models/blobs"
    progress "$short" "$digest" "$size" "$size"
done

status "writing manifest"
target="$models/manifests/$mpath"
mkdir -p "$(dirname "$target")" || fail "cannot create $(dirname "$target")"
chown -R "$owner:" "$models/manifests"
chown "$owner:" "$mfile" && chmod 644 "$mfile" && mv -f "$mfile" "$target" ||
    fail "cannot write $target"
status "success"
