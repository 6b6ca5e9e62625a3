#!/usr/bin/env bash
# Interleaved coaps:// (DTLS 1.2, TLS_PSK_WITH_AES_128_CCM_8) benchmark: suitcase vs libcoap's
# coap-server-openssl, both on the same system OpenSSL.
#
#   crates/suitcase-bench/scripts/dtls.sh                  # ROUNDS=3 N=100 HANDSHAKES=20
#
# Each trial starts a fresh server pinned to core 0 with one PSK (identity "bench"), loads the
# same 1 MiB image into it (suitcase: publish; libcoap: PUT over plain CoAP, served on its
# coaps port, -p + 1), then runs `loadgen` pinned to core 1 twice against it:
#   handshakes: N devices each handshake HANDSHAKES times in a row (fresh socket each time,
#               cookie exchange included, close_notify after) -> handshakes/s;
#   download:   N devices each handshake once, then download the image with CON GETs at
#               Block2 SZX 6 (1024 bytes), one request in flight, every block compared.
# Server CPU seconds of each phase come from /proc. Needs libcoap3-bin, taskset; loopback only.
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-3}
N=${N:-100}
HANDSHAKES=${HANDSHAKES:-20}
SERVERS=${SERVERS:-"suitcase libcoap"}
OUT=${OUT:-$(mktemp /tmp/dtls-bench.XXXXXX.tsv)}
KEY=bench-psk-key

cargo build --release -q -p suitcase -p suitcase-bench
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
python3 -c "import random; random.seed(7); open('$work/fw.bin','wb').write(random.randbytes(1048576))"
sysctl -qw net.core.rmem_max=16777216 net.core.wmem_max=16777216 net.core.rmem_default=8388608 2>/dev/null || true
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_coap() {
  for _ in $(seq 100); do
    coap-client-notls -m get -B 1 "coap://[::1]:$1/.well-known/core" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server on port $1 never answered" >&2; return 1
}

port=21000
start_server() { # name -> PID, DTLS_PORT, URIPATH
  port=$((port + 4))
  case $1 in
    suitcase)
      rm -rf "$work/data"
      "$BIN/suitcase" token create bench --device --psk --psk-key "$KEY" --data "$work/data" >/dev/null 2>&1
      taskset -c 0 "$BIN/suitcase" serve --data "$work/data" --coap "[::1]:$port" --http "[::1]:$((port + 1))" \
        --coaps "[::1]:$((port + 2))" 2>"$work/suitcase.log" &
      PID=$!
      wait_coap "$port"
      SUITCASE_DATA="$work/data" taskset -c 1 "$BIN/suitcase" publish --server "http://[::1]:$((port + 1))" \
        --publish-id bench --publish "$work/fw.bin" >/dev/null
      DTLS_PORT=$((port + 2)); URIPATH=bench/fw.bin ;;
    libcoap)
      taskset -c 0 coap-server-openssl -A ::1 -p "$port" -k "$KEY" -d 10 >/dev/null 2>&1 &
      PID=$!
      wait_coap "$port"
      coap-client-notls -m put -b 1024 -f "$work/fw.bin" "coap://[::1]:$port/fw.bin" >/dev/null
      DTLS_PORT=$((port + 1)); URIPATH=fw.bin ;;
  esac
}

[ -s "$OUT" ] || printf 'round\tserver\tn\tphase\trate\tp50_ms\tp95_ms\terrors\tserver_cpu_s\tpeak_rss_kb\n' | tee "$OUT"
for round in $(seq "$ROUNDS"); do
  for server in $SERVERS; do
    start_server "$server"
    common=(--server "[::1]:$DTLS_PORT" --path "$URIPATH" --expect "$work/fw.bin" --devices "$N"
            --psk-identity bench --psk-key "$KEY" --label "$server")
    t0=$(cpu_ticks "$PID")
    hs=$(taskset -c 1 "$BIN/loadgen" "${common[@]}" --handshakes "$HANDSHAKES" || true)
    t1=$(cpu_ticks "$PID")
    dl=$(taskset -c 1 "$BIN/loadgen" "${common[@]}" --json || true)
    t2=$(cpu_ticks "$PID")
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
    kill "$PID"; wait "$PID" 2>/dev/null || true
    python3 - "$round" "$server" "$N" "$hs" "$dl" "$t0" "$t1" "$t2" "$rss" <<'PY' | tee -a "$OUT"
import json, os, sys
r, s, n, hs, dl, t0, t1, t2, rss = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
kv = dict(p.split("=", 1) for p in hs.split()) if hs.strip() else {}
print("\t".join(map(str, [r, s, n, "handshakes", kv.get("handshakes_per_s", 0), kv.get("p50_ms", 0), kv.get("p95_ms", 0), kv.get("errors", n), round((int(t1) - int(t0)) / hz, 2), rss])))
j = json.loads(dl) if dl.strip() else {"blocks_per_s": 0, "p50_ms": 0, "p95_ms": 0, "errors": int(n)}
print("\t".join(map(str, [r, s, n, "download", j["blocks_per_s"], j["p50_ms"], j["p95_ms"], j["errors"], round((int(t2) - int(t1)) / hz, 2), rss])))
PY
  done
done

python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["phase"], r["server"]), []).append(r)
def med(k, key):
    return statistics.median(float(x[key]) for x in by[k])
print("\n| phase | server | rate median (min–max) | p95 ms | errors | server CPU s | peak RSS MB | vs libcoap |")
print("|---|---|---|---|---|---|---|---|")
for phase, unit in [("handshakes", "handshakes/s"), ("download", "blocks/s")]:
    for s in ["suitcase", "libcoap"]:
        k = (phase, s)
        if k not in by: continue
        v = [float(x["rate"]) for x in by[k]]
        o = (phase, "libcoap")
        ratio = f'{med(k, "rate") / med(o, "rate"):.2f}×' if o in by and med(o, "rate") > 0 else "–"
        print(f'| {phase} ({unit}) | {s} | {statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f}) | {med(k, "p95_ms"):.1f} | {sum(int(float(x["errors"])) for x in by[k])} | {med(k, "server_cpu_s"):.2f} | {max(float(x["peak_rss_kb"]) for x in by[k]) / 1024:.1f} | {ratio} |')
print(f"\nraw results: {sys.argv[1]}")
PY
