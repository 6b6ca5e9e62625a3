#!/usr/bin/env bash
# The shared store (PostgreSQL + S3) against the local store, and what a cluster costs:
#
#   crates/suitcase-bench/scripts/shared-store.sh        # ROUNDS=3 N=100 IMAGE_BYTES=1048576
#
# Needs Debian's postgresql, s3s-fs (cargo install s3s-fs --features binary), taskset;
# starts both itself on loopback (PostgreSQL as the postgres user when run as root).
#
# 1. blocks/s, interleaved: each round starts a fresh `local` server (the embedded store)
#    and a fresh `shared` one (--database + --blobs), each pinned to core 0, publishes the
#    same image on it (so the shared node's cache is warm, as after any publish or
#    prefetch) and runs `loadgen` on core 1: N devices, CON GETs, SZX 6, every block checked.
# 2. publish on node A to the first block served by node B: ROUNDS publishes of a new
#    version on A, B polled every millisecond for block 0 of `v/<n>/fw.bin`.
# 3. a cold node: a fresh node C (empty cache) is started; its log says how long fetching
#    the newest version into its cache took (it does that as it starts); then the first
#    whole download from it, right after it listens, and a second one.
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-3}
N=${N:-100}
IMAGE_BYTES=${IMAGE_BYTES:-1048576}
OUT=${OUT:-$(mktemp /tmp/shared-store.XXXXXX.tsv)}

cargo build --release -q -p suitcase -p suitcase-bench
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
python3 -c "import random; random.seed(7); open('$work/fw.bin','wb').write(random.randbytes($IMAGE_BYTES))"
source crates/suitcase-bench/scripts/pg-s3.sh
"$BIN/suitcase" keygen --out "$work/key.pem" >/dev/null

port=22000
# start NAME CORE FLAGS...: a server on the next two ports; sets PID, COAP, HTTP, DATA.
start() {
  local name=$1 core=$2; shift 2
  port=$((port + 2)); COAP=$port; HTTP=$((port + 1)); DATA=$work/$name
  rm -rf "$DATA"
  taskset -c "$core" "$BIN/suitcase" serve --data "$DATA" --coap "[::1]:$COAP" --http "[::1]:$HTTP" \
    --key "$work/key.pem" "$@" 2>"$work/$name.log" &
  PID=$!
  for _ in $(seq 200); do grep -q "listening for HTTP" "$work/$name.log" 2>/dev/null && break; sleep 0.05; done
}
publish() { SUITCASE_DATA=$1 SUITCASE_SERVER=http://[::1]:$2 taskset -c 1 "$BIN/suitcase" publish --quiet --publish-id bench --publish "$work/fw.bin"; }

printf 'round\tvariant\tn\tblocks_per_s\tp95_ms\terrors\twall_s\n' | tee "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for variant in local shared; do
    flags=(); [ "$variant" = shared ] && flags=("${SHARED[@]}")
    start "$variant" 0 "${flags[@]}"
    publish "$DATA" "$HTTP" >/dev/null
    line=$(taskset -c 1 "$BIN/loadgen" --server "[::1]:$COAP" --path bench/fw.bin --expect "$work/fw.bin" \
             --devices "$N" --szx 6 --label "$variant" --json)
    kill "$PID"; wait "$PID" 2>/dev/null || true
    python3 -c "
import json, sys
j = json.loads(sys.argv[4])
print('\t'.join(map(str, [sys.argv[1], sys.argv[2], sys.argv[3], j['blocks_per_s'], j['p95_ms'], j['errors'], j['wall_s']])))" \
      "$round" "$variant" "$N" "$line" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = {v: statistics.median(float(r["blocks_per_s"]) for r in rows if r["variant"] == v) for v in ("local", "shared")}
print(f"median blocks/s: local {med['local']:.0f}, shared {med['shared']:.0f} ({100 * (med['shared'] / med['local'] - 1):+.1f} %)")
PY

# 2. Publish on A, first block from B.
start a 0 "${SHARED[@]}"; A_PID=$PID; A_DATA=$DATA; A_HTTP=$HTTP
start b 1 "${SHARED[@]}"; B_PID=$PID; B_COAP=$COAP
python3 - "$A_DATA" "$A_HTTP" "$B_COAP" "$BIN/suitcase" "$work/fw.bin" "$ROUNDS" <<'PY'
import json, os, socket, struct, subprocess, sys, time
data, http, coap, suitcase, image, rounds = sys.argv[1:]
def get_block0(path):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(0.5)
    opts, last = b"", 0
    for seg in path.split("/"):
        seg = seg.encode(); d = 11 - last; last = 11
        opts += bytes([(d << 4) | len(seg)]) + seg if len(seg) < 13 else bytes([(d << 4) | 13, len(seg) - 13]) + seg
    opts += bytes([((23 - 11) << 4) | 1, 6])  # Block2: num 0, szx 6
    s.sendto(bytes([0x40, 1, 0x12, 0x34]) + opts, ("::1", int(coap)))
    try:
        r = s.recv(2000)
        return r[1] == 0x45
    except socket.timeout:
        return False
env = dict(os.environ, SUITCASE_DATA=data, SUITCASE_SERVER=f"http://[::1]:{http}")
times = []
for _ in range(int(rounds) * 3):
    out = subprocess.run([suitcase, "publish", "--quiet", "--json", "--publish-id", "bench", "--publish", image],
                         env=env, capture_output=True, text=True, check=True).stdout
    t0 = time.monotonic()
    n = json.loads(out)["version"]
    while not get_block0(f"bench/v/{n}/fw.bin"):
        time.sleep(0.001)
    times.append((time.monotonic() - t0) * 1000)
times.sort()
print(f"publish on A to first block from B: median {times[len(times)//2]:.1f} ms, max {times[-1]:.1f} ms over {len(times)} publishes")
PY
kill "$B_PID"; wait "$B_PID" 2>/dev/null || true

# 3. A cold node.
t0=$(date +%s.%N)
start c 0 "${SHARED[@]}"
t1=$(date +%s.%N)
cold=$(taskset -c 1 "$BIN/loadgen" --server "[::1]:$COAP" --path bench/fw.bin --expect "$work/fw.bin" --devices 1 --szx 6 --json)
warm=$(taskset -c 1 "$BIN/loadgen" --server "[::1]:$COAP" --path bench/fw.bin --expect "$work/fw.bin" --devices 1 --szx 6 --json)
python3 -c "
import json, sys
c, w = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f'cold node: start to listening {float(sys.argv[4]) - float(sys.argv[3]):.2f} s; first download of {int(sys.argv[5]) // 1024} KiB {c[\"wall_s\"]:.3f} s (errors {c[\"errors\"]}), second {w[\"wall_s\"]:.3f} s')" \
  "$cold" "$warm" "$t0" "$t1" "$IMAGE_BYTES"
grep "contents fetched into the cache" "$work/c.log" | sed 's/^/node C: /' || true
kill "$PID" "$A_PID"; wait 2>/dev/null || true
echo "results: $OUT"
