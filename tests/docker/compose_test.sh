#!/usr/bin/env bash
# End-to-end test of docker-compose.yml on a machine that can pull nothing.
#
# Builds static (glibc, +crt-static) binaries on the host
# (docker/stage-local.sh), packs them into FROM scratch images through
# docker/compose.local.yml (which swaps only how the images are built),
# brings the stack up under a project name of its own, then: upload with
# curl through the gateway (8080), upload with the native step-client (1379), download the first back byte-identical, `down` + `up`
# (the named volume stays), find both files again, and finally `down -v` and
# remove the images; then the same volume in accounts mode with the token
# secret and the accounts as Docker secrets (compose.accounts.yml).
# Everything it creates is removed on exit, pass or fail.
#
#     tests/docker/compose_test.sh        # exit 0 pass, 77 skipped, else fail
#
# Run by tests/tests/docker_compose.rs as part of `cargo test --workspace`.
# Needs: docker (engine answering), docker-compose v1.29+ or `docker compose`,
# curl, cargo. Ports 1379 and 8080 of this host must be free (they are fixed
# in docker-compose.yml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

T0=$(date +%s.%N)
say() { printf '[compose-test] %s\n' "$*"; }
fail() { printf '[compose-test] FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf 'skipped: %s\n' "$*"; exit 77; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------ prerequisites
command -v docker >/dev/null 2>&1 || skip "no Docker engine (no docker command)"
docker info >/dev/null 2>&1 || skip "no Docker engine (docker info fails)"
if docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_CMD=(docker-compose)
else
    skip "no docker compose (neither the v2 plugin nor docker-compose)"
fi
command -v curl >/dev/null 2>&1 || fail "curl is needed"
CARGO="${CARGO:-cargo}"

ports_free() {
    local port
    for port in 1379 8080; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            fail "port $port on this host is already in use; docker-compose.yml publishes it (stop whatever listens there)"
        fi
    done
}
ports_free

# The stack's configuration is the compose file's defaults, whatever this
# shell or an .env file says (an empty --env-file below); the client's too.
unset STEP_TOKEN_SECRET_FILE STEP_ACCOUNTS_FILE STEP_AUTH GATEWAY_ANONYMOUS \
    STEP_TOKEN_SECRET_PATH STEP_ACCOUNTS_PATH STEP_TOKEN_TTL STEP_MAX_FILE_SIZE STEP_MAX_CONNECTIONS \
    STEP_IDLE_TIMEOUT STEP_ANONYMOUS STEP_PUBLIC_USER GATEWAY_REQUIRE_AUTH GATEWAY_MAX_UPLOAD \
    GATEWAY_CORS_ORIGINS STEP_SERVER STEP_PORT STEP_ID STEP_PASSWORD STEP_TIMEOUT

PROJECT="steptest$$$(date +%s)"
export STEP_IMAGE_TAG="$PROJECT"
# Tokens signed with a fixed secret survive the restart below; the value is
# only in this process's environment, never in an image.
STEP_TOKEN_SECRET="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export STEP_TOKEN_SECRET
export STEP_LOG=info GATEWAY_LOG=info
EXTRA_FILES=()
compose() {
    "${COMPOSE_CMD[@]}" --env-file "$WORK/empty.env" -p "$PROJECT" \
        -f docker-compose.yml -f docker/compose.local.yml ${EXTRA_FILES[@]+"${EXTRA_FILES[@]}"} "$@"
}

WORK="$(mktemp -d)"
: >"$WORK/empty.env"
STARTED=0
cleanup() {
    local rc=$?
    set +e
    if [ "$STARTED" = 1 ]; then
        if [ "$rc" != 0 ]; then
            say "logs of the failed run:"
            compose logs --no-color --tail 40 2>&1 | sed 's/^/    /'
        fi
        compose down -v --rmi all --remove-orphans >/dev/null 2>&1
        for image in "step-server:$STEP_IMAGE_TAG" "step-gateway:$STEP_IMAGE_TAG"; do
            docker image rm "$image" >/dev/null 2>&1
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "compose: ${COMPOSE_CMD[*]} ($("${COMPOSE_CMD[@]}" version --short 2>/dev/null || true)), project $PROJECT"

# ------------------------------------------------- static binaries, staged
t=$(date +%s.%N)
say "building static binaries (release; the first build takes minutes)"
BIN="$(docker/stage-local.sh)" || fail "docker/stage-local.sh could not build or stage the binaries"
say "static build + staging: $(since "$t") s"
CLIENT="$BIN/step-client"

# ------------------------------------------------------------ images, up
ports_free
t=$(date +%s.%N)
STARTED=1
compose build >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "image build failed"; }
say "images built in $(since "$t") s (nothing pulled):"
for image in "step-server:$STEP_IMAGE_TAG" "step-gateway:$STEP_IMAGE_TAG"; do
    size=$(docker image inspect -f '{{.Size}}' "$image") || fail "no image $image"
    say "    $image  $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }')"
done

wait_healthy() {
    local deadline=$((SECONDS + 120)) service id status
    for service in step-server gateway; do
        while :; do
            id="$(compose ps -q "$service" 2>/dev/null || true)"
            status="$( [ -n "$id" ] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo starting)"
            [ "$status" = healthy ] && break
            [ "$status" = unhealthy ] && fail "$service is unhealthy"
            [ "$SECONDS" -lt "$deadline" ] || fail "$service not healthy after 120 s (status: $status)"
            sleep 0.25
        done
    done
}

up() {
    local t
    t=$(date +%s.%N)
    compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up failed"; }
    wait_healthy
    HEALTHY_AFTER="$(since "$t")"
}

up
FIRST_HEALTHY="$HEALTHY_AFTER"
say "stack healthy $FIRST_HEALTHY s after 'up'"

# ------------------------------------------------------------ the files
CURL_FILE="$WORK/compose-curl-$$.bin"     # > 4 MiB: the gateway spools it to /tmp
NATIVE_FILE="$WORK/compose-native-$$.bin"
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom >"$CURL_FILE"
head -c $((3 * 1024 * 1024 + 45)) /dev/urandom >"$NATIVE_FILE"
CURL_KEY="$(basename "$CURL_FILE")"
NATIVE_KEY="$(basename "$NATIVE_FILE")"
ID=123456

code="$(curl -sS -o "$WORK/answer" -w '%{http_code}' -F "file=@$CURL_FILE" http://localhost:8080/upload)" ||
    fail "curl upload through the gateway could not connect"
answer="$(cat "$WORK/answer")"
[ "$code" = 201 ] || fail "curl upload through the gateway: HTTP $code: $answer"
case "$answer" in *"\"key\":\"$CURL_KEY\""*) ;; *) fail "unexpected upload answer: $answer" ;; esac
say "curl -F file=@... localhost:8080/upload -> $answer"

"$CLIENT" -server_ip 127.0.0.1 -id "$ID" -f "$NATIVE_FILE" >"$WORK/native-upload.log" 2>&1 ||
    { cat "$WORK/native-upload.log"; fail "native step-client upload to 1379"; }
say "step-client -server_ip 127.0.0.1 -id $ID -f $NATIVE_KEY: ok"

check_files() {
    local when="$1"
    code="$(curl -sS -o "$WORK/back.bin" -w '%{http_code}' "http://localhost:8080/files/$CURL_KEY")" ||
        fail "$when: GET /files/$CURL_KEY through the gateway could not connect"
    [ "$code" = 200 ] || fail "$when: GET /files/$CURL_KEY through the gateway: HTTP $code: $(head -c 300 "$WORK/back.bin")"
    cmp -s "$CURL_FILE" "$WORK/back.bin" || fail "$when: the file downloaded through the gateway differs"
    "$CLIENT" --server-ip 127.0.0.1 --id "$ID" -q download "$NATIVE_KEY" -o "$WORK/native-back.bin" --force \
        >"$WORK/native-download.log" 2>&1 || { cat "$WORK/native-download.log"; fail "$when: native download"; }
    cmp -s "$NATIVE_FILE" "$WORK/native-back.bin" || fail "$when: the natively downloaded file differs"
    say "$when: both files read back byte-identical (gateway GET, step-client download)"
}
check_files "before restart"

# ------------------------------------------------------------ restart
compose down >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "compose down"; }
docker volume inspect "${PROJECT}_step-data" >/dev/null 2>&1 || fail "the named volume did not survive 'down'"
up
say "down + up: healthy again $HEALTHY_AFTER s after 'up'"
check_files "after restart"
"$CLIENT" --server-ip 127.0.0.1 --id "$ID" -q plan "$NATIVE_KEY" >/dev/null || fail "plan $NATIVE_KEY after restart"

if compose logs --no-color step-server 2>/dev/null | grep "no token secret configured" >/dev/null; then
    fail "STEP_TOKEN_SECRET did not reach the server"
fi

# ------------------------------------------------ accounts mode, secrets
# compose.accounts.yml: STEP_AUTH=accounts, the token secret and the accounts
# as Docker secrets (files readable by the containers' uid 65532), no
# anonymous access through the gateway. Same volume: the files stay.
compose down >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "compose down"; }
SECRETS="$WORK/secrets"
mkdir -p "$SECRETS"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SECRETS/token"
ALICE_PW="alice-$$-pw"
HASH="$(printf '%s\n' "$ALICE_PW" | "$BIN/step-server" user hash)" || fail "step-server user hash"
printf '# compose test\nalice:%s\n' "$HASH" >"$SECRETS/accounts"
chmod 755 "$SECRETS"
chmod 644 "$SECRETS/token" "$SECRETS/accounts"
export STEP_TOKEN_SECRET_PATH="$SECRETS/token" STEP_ACCOUNTS_PATH="$SECRETS/accounts"
unset STEP_TOKEN_SECRET
EXTRA_FILES=(-f compose.accounts.yml)
up
say "accounts mode (compose.accounts.yml): healthy $HEALTHY_AFTER s after 'up'"
code="$(curl -sS -o /dev/null -w '%{http_code}' "http://localhost:8080/files/$CURL_KEY")"
[ "$code" = 401 ] || fail "accounts mode: a token-less GET got HTTP $code, not 401"
code="$(curl -sS -o /dev/null -w '%{http_code}' -u "alice:$ALICE_PW" -T "$NATIVE_FILE" http://localhost:8080/files/alice.bin)"
[ "$code" = 201 ] || fail "accounts mode: curl -u alice upload: HTTP $code"
code="$(curl -sS -o "$WORK/alice.bin" -w '%{http_code}' -u "alice:$ALICE_PW" http://localhost:8080/files/alice.bin)"
[ "$code" = 200 ] && cmp -s "$NATIVE_FILE" "$WORK/alice.bin" || fail "accounts mode: curl -u alice read back: HTTP $code"
code="$(curl -sS -o /dev/null -w '%{http_code}' -u "alice:wrong" http://localhost:8080/files/alice.bin)"
[ "$code" = 401 ] || fail "accounts mode: a wrong password got HTTP $code"
STEP_PASSWORD="$ALICE_PW" "$CLIENT" --server-ip 127.0.0.1 --id alice -q download alice.bin \
    -o "$WORK/alice-native.bin" --force >"$WORK/alice.log" 2>&1 || { cat "$WORK/alice.log"; fail "accounts mode: step-client as alice"; }
cmp -s "$NATIVE_FILE" "$WORK/alice-native.bin" || fail "accounts mode: step-client read back differs"
if "$CLIENT" --server-ip 127.0.0.1 --id "$ID" -q plan "$NATIVE_KEY" </dev/null >/dev/null 2>&1; then
    fail "accounts mode: the course-style login (md5 of the id) was accepted"
fi
# grep reads all the logs (not -q): under pipefail an early exit would fail the
# pipeline with SIGPIPE however the lines read.
compose logs --no-color step-server 2>/dev/null | grep "accounts imported" >/dev/null ||
    fail "accounts mode: the accounts secret was not imported"
say "accounts mode: token-less 401, curl -u alice and step-client with STEP_PASSWORD work, md5 login refused"

# ------------------------------------------------------------ teardown
compose down -v --rmi all --remove-orphans >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "compose down -v"; }
STARTED=0
for image in "step-server:$STEP_IMAGE_TAG" "step-gateway:$STEP_IMAGE_TAG"; do
    ! docker image inspect "$image" >/dev/null 2>&1 || fail "$image still there after down --rmi all"
done
! docker volume inspect "${PROJECT}_step-data" >/dev/null 2>&1 || fail "volume still there after down -v"
say "down -v --rmi all: containers, network, volume and images removed"
say "PASS in $(since "$T0") s (time to healthy: $FIRST_HEALTHY s first, $HEALTHY_AFTER s after restart)"
