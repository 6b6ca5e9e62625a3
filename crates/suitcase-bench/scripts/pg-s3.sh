# Sourced by the cluster benchmarks: a real PostgreSQL (Debian's postgresql) and s3s-fs on
# free loopback ports under "$work" (which the caller made and removes), both stopped with
# the caller's process group. Sets PGPORT, S3PORT and SHARED (the serve flags of a node)
# and exports the AWS_* variables s3s-fs is started with.
S3S=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); S3PORT=$(free_port)
chmod 755 "$work"
mkdir -p "$work/pg" "$work/s3/bench"
as_pg=(); [ "$(id -u)" = 0 ] && { chown postgres "$work/pg"; as_pg=(runuser -u postgres --); }
"${as_pg[@]}" "$PGBIN/initdb" -D "$work/pg/data" -A trust -U suitcase >/dev/null
"${as_pg[@]}" "$PGBIN/postgres" -D "$work/pg/data" -k "$work/pg" -h 127.0.0.1 -p "$PGPORT" >/dev/null 2>&1 &
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
"$S3S" --host 127.0.0.1 --port "$S3PORT" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
SHARED=(--database "postgres://suitcase@127.0.0.1:$PGPORT/postgres" --blobs s3://bench/suitcase
        --s3-endpoint "http://127.0.0.1:$S3PORT")
