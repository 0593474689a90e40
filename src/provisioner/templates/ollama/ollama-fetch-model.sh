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
#
# Environment (set by the ollama.models operation from provisioner's data/bounds.toml):
#   PROVISIONER_CURL_BOUNDS  curl options bounding each transfer (--connect-timeout,
#                            --speed-limit/--speed-time for a stall, --max-time, --retry)
#   PROVISIONER_STORE_WAIT   seconds to wait for another fetch into the same store (flock)
# One fetch at a time works in a store (flock on the .provisioner-tmp directory); curl's messages go
# to a temporary file outside the store (a full store cannot swallow the reason). An
# interrupted helper (SIGINT, SIGTERM, SIGHUP, or SIGPIPE when its connection closed: progress
# is printed at least every second) stops its curl before it exits: nothing keeps writing.
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
# a write that fails means nobody reads our output any more (the connection closed): stop
status() { printf '{"status":"%s"}\n' "$1" 2>/dev/null || exit 141; }
progress() {
    printf '{"status":"pulling %s","digest":"%s","total":%s,"completed":%s}\n' \
        "$1" "$2" "$3" "$4" 2>/dev/null || exit 141
}
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

case "/$mpath/" in
    */../* | */./* | *//*) fail "bad manifest path $mpath" ;;
esac

tmp="$models/.provisioner-tmp"
mkdir -p "$models/blobs" "$models/manifests" "$tmp" || fail "cannot create directories in $models"
chown "$owner:" "$models" "$models/blobs" "$models/manifests" || fail "cannot chown $models to $owner"
chmod 700 "$tmp"

pid='' err='' mtmp=''
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    rm -f "$err" "$mtmp"
}
trap cleanup EXIT
trap 'trap - EXIT; cleanup; exit 130' INT TERM HUP PIPE
err=$(mktemp "${TMPDIR:-/tmp}/ollama-fetch.XXXXXX") || fail "cannot create a temporary file"

if command -v flock >/dev/null 2>&1; then
    exec 9<"$tmp" || fail "cannot open $tmp"
    wait_s=${PROVISIONER_STORE_WAIT:-600}
    flock -w "$wait_s" 9 || fail "another fetch into $models held its lock for more than ${wait_s}s"
fi

# bytes free in the store's file system
free_bytes() { df -Pk "$models" 2>/dev/null | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }'; }

mtmp=$(mktemp "$tmp/manifest.XXXXXX") || fail "cannot create a temporary file in $tmp"
mfile=$mtmp
status "pulling manifest"
case "$msource" in
    http://* | https://*)
        curl -fsSL --retry 3 --connect-timeout 30 \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            -o "$mfile" "$msource" 2>"$err" ||
            fail "cannot fetch the manifest $msource: $(cat "$err" 2>/dev/null)"
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
    need=$((size - $(size_of "$part")))
    free=$(free_bytes)
    if [ -n "$free" ] && [ "$free" -lt "$need" ]; then
        fail "no space left in $models for $digest: it needs $need more bytes, $free are free"
    fi
    attempt=1
    while [ "$(size_of "$part")" -lt "$size" ] || [ ! -f "$part" ]; do
        progress "$short" "$digest" "$size" "$(size_of "$part")"
        # shellcheck disable=SC2086  # the bounds are separate options
        curl -fsSL ${PROVISIONER_CURL_BOUNDS:---connect-timeout 30 --retry 3} --retry-delay 2 \
            -C - -o "$part" "$base$digest" 2>"$err" &
        pid=$!
        shown=-1 ticks=0
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.2 2>/dev/null || sleep 1
            now=$(size_of "$part")
            ticks=$((ticks + 1))
            # at least once a second: a closed connection is noticed (SIGPIPE) within a second
            if [ "$now" != "$shown" ] || [ "$ticks" -ge 5 ]; then
                progress "$short" "$digest" "$size" "$now"
                shown=$now ticks=0
            fi
        done
        wait "$pid"
        rc=$?
        pid=''
        [ "$rc" -eq 0 ] && break
        why=$(tr '\n' ' ' <"$err")
        free=$(free_bytes)
        if [ "$rc" -eq 23 ] || { [ -n "$free" ] && [ "$free" -lt 4096 ]; }; then
            fail "download of $digest into $models failed: no space left on device ($free bytes free): $why"
        fi
        if [ "$attempt" -ge 2 ]; then
            fail "download of $digest from $base failed (curl exit $rc): $why"
        fi
        # 33/36: the registry ignores Range or the partial file is stale: start this blob again;
        # anything else (a stall, a dropped connection): resume from what arrived
        case "$rc" in 33 | 36) rm -f "$part" ;; esac
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
