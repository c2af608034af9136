# Helpers for the benchmarks that run a one-node Garage on loopback
# (configured as the tests configure it, tests/src/garage.rs). Sourced by
# bench/garage_ceiling.sh and bench/ab_store.sh; the caller sets WORK (a
# scratch directory) and GARAGE (the garage binary).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT PID: bounded, and fails at once if the process died
  for _ in $(seq 1000); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "the process for port $1 exited" >&2; tail -20 "$WORK"/*/garage.log >&2 2>/dev/null; return 1; }
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2; return 1
}


start_garage() { # start_garage NAME FSYNC(true|false) [LD_PRELOAD] -> G_PID, AWS_* exported
  local dir=$WORK/$1 s3 rpc
  mkdir -p "$dir"
  s3=$(free_port); rpc=$(free_port)
  cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
data_fsync = $2
metadata_fsync = $2
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
TOML
  export AWS_ACCESS_KEY_ID=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export AWS_SECRET_ACCESS_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export AWS_ENDPOINT_URL=http://127.0.0.1:$s3 AWS_REGION=garage AWS_ALLOW_HTTP=true S3_BUCKET=bench
  # --single-node --default-bucket: layout, key and bucket made before the
  # S3 port opens (see tests/src/garage.rs).
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=bench RUST_LOG=warn LD_PRELOAD=${3:-} \
    "$GARAGE" -c "$dir/garage.toml" server --single-node --default-bucket >"$dir/garage.log" 2>&1 &
  G_PID=$!
  wait_port "$s3" "$G_PID"
}
stop_garage() { kill "$G_PID" 2>/dev/null || true; wait "$G_PID" 2>/dev/null || true; G_PID=; }

