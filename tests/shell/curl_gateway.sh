#!/usr/bin/env bash
# The gateway as a person uses it: curl against `gateway` (embedded
# step-server, no flags beyond free ports and a temp store).
#   tests/shell/curl_gateway.sh path/to/gateway
set -euo pipefail
GATEWAY=${1:?usage: curl_gateway.sh path/to/gateway}
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); STEP=$(free_port)
"$GATEWAY" --bind 127.0.0.1 --port "$HTTP" --step-ip 127.0.0.1 --step-port "$STEP" --data-dir "$WORK/store" --log warn &
PID=$!
for _ in $(seq 100); do curl -sf "localhost:$HTTP/healthz" >/dev/null && break; sleep 0.1; done
cd "$WORK"
head -c 2500000 /dev/urandom > otter.jpg
want=$(md5sum otter.jpg | cut -d' ' -f1)
fail() { echo "FAIL: $*"; exit 1; }
pass=0
ok() { pass=$((pass + 1)); echo "ok - $*"; }

# The bare command from the README.
out=$(curl -sS -F file=@otter.jpg "localhost:$HTTP/upload")
echo "$out" | grep -q "\"md5\":\"$want\"" || fail "multipart upload answered $out"
echo "$out" | grep -q '"key":"otter.jpg"' || fail "key missing in $out"
ok "curl -F file=@otter.jpg /upload"

curl -sSf -o back.jpg "localhost:$HTTP/files/otter.jpg"
[ "$(md5sum back.jpg | cut -d' ' -f1)" = "$want" ] || fail "download differs"
ok "download byte-identical"

code=$(curl -s -o /dev/null -w '%{http_code}' -T otter.jpg "localhost:$HTTP/files/copies/otter.jpg")
[ "$code" = 201 ] || fail "curl -T answered $code"
curl -sSf -o back2.jpg "localhost:$HTTP/files/copies/otter.jpg"
cmp -s otter.jpg back2.jpg || fail "PUT copy differs"
ok "curl -T streams a raw body"

curl -sSf -r 100-199 -o part "localhost:$HTTP/files/otter.jpg"
dd if=otter.jpg bs=1 skip=100 count=100 status=none | cmp -s - part || fail "range differs"
ok "curl -r range"

headers=$(curl -sSI "localhost:$HTTP/files/otter.jpg")
echo "$headers" | grep -qi "^etag: \"$want\"" || fail "HEAD lacks the ETag: $headers"
echo "$headers" | grep -qi '^content-type: image/jpeg' || fail "HEAD content-type: $headers"
ok "curl -I headers"

code=$(curl -s -o err.json -w '%{http_code}' -F file=@otter.jpg "localhost:$HTTP/upload")
[ "$code" = 409 ] && grep -q '"error":"key_exists"' err.json || fail "re-upload answered $code $(cat err.json)"
ok "409 JSON on an existing key"

code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "localhost:$HTTP/files/otter.jpg")
[ "$code" = 204 ] || fail "delete answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "localhost:$HTTP/files/otter.jpg")
[ "$code" = 404 ] || fail "deleted file answered $code"
ok "DELETE then 404"

token=$(curl -sSf -H 'content-type: application/json' -d '{"username":"curl-user"}' "localhost:$HTTP/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sSf -H "Authorization: Bearer $token" -H 'content-type: application/json' -d '{"colour":"brown"}' -X PUT "localhost:$HTTP/records/otter" >/dev/null
curl -sSf -H "Authorization: Bearer $token" "localhost:$HTTP/records/otter" | grep -q '"colour":"brown"' || fail "record read back"
ok "login + records with a bearer token"

# Fetched to files first: `curl | grep -q` fails under pipefail when grep
# exits before curl has written everything (curl: (23)).
curl -sSf -o metrics.txt "localhost:$HTTP/metrics" && grep -q 'gateway_http_requests_total' metrics.txt || fail "metrics"
curl -sSf -o openapi.yaml "localhost:$HTTP/openapi.yaml" && grep -q '^openapi: 3\.1' openapi.yaml || fail "openapi"
ok "metrics and openapi.yaml"
echo "curl: $pass passed, 0 failed"
