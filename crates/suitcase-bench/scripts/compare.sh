#!/usr/bin/env bash
# Interleaved CoAP download benchmark: suitcase vs libcoap coap-server vs aiocoap-fileserver.
#
#   crates/suitcase-bench/scripts/compare.sh                  # ROUNDS=3, NS="1 10 100 1000"
#   ROUNDS=1 NS="10000" SERVERS=suitcase crates/suitcase-bench/scripts/compare.sh
#   BASE_BIN=/path/to/older/suitcase SERVERS="suitcase suitcase-base" ...   # A/B of two builds
#
# Each trial starts a fresh server pinned to core 0, loads the same 1 MiB image into it,
# and runs `loadgen` pinned to core 1: N devices, each its own UDP socket, CON GETs with
# Block2 SZX 6 (1024 bytes), one request in flight, every block compared with the image.
# Prints one TSV line per trial (server CPU seconds and peak RSS from /proc), then a
# summary with medians. Needs: libcoap3-bin, aiocoap (pip), taskset; loopback only.
#
# Last, `charts` (built with loadgen) draws coap-blocks-per-s.svg and coap-rss.svg from $OUT
# into ${CHARTS:-docs/charts}, replacing the charts there. A run kept in several files (the
# 10k run is its own invocation) is drawn merged: CHARTS_MERGE names the other TSVs, e.g.
#   CHARTS_MERGE=docs/bench-results/coap-batched-2026-11-23.tsv ROUNDS=3 NS=10000 SERVERS=suitcase \
#     crates/suitcase-bench/scripts/compare.sh
# or by hand: target/release/charts compare a.tsv b.tsv --out docs/charts
# (CHARTS=/tmp/charts keeps a trial run away from the committed ones).
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-3}
NS=${NS:-"1 10 100 1000"}
SERVERS=${SERVERS:-"suitcase libcoap aiocoap"}
SZX=${SZX:-6}
IMAGE_BYTES=${IMAGE_BYTES:-1048576}
OUT=${OUT:-$(mktemp /tmp/coap-bench.XXXXXX.tsv)}
FIRST_ROUND=${FIRST_ROUND:-1}
SKIP=${SKIP:-}          # e.g. "aiocoap:1000" skips that (server, N) pair (aiocoap needs ~7 min for it)
CHARTS=${CHARTS:-docs/charts}
CHARTS_MERGE=${CHARTS_MERGE:-}  # more compare.sh TSVs drawn with this run's

cargo build --release -q -p suitcase -p suitcase-bench   # suitcase-bench: loadgen and charts
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
python3 -c "import random; random.seed(7); open('$work/fw.bin','wb').write(random.randbytes($IMAGE_BYTES))"
mkdir -p "$work/www" && cp "$work/fw.bin" "$work/www/fw.bin"

# Bigger socket buffers for the servers that cannot set their own (suitcase sets SO_RCVBUF).
sysctl -qw net.core.rmem_max=16777216 net.core.wmem_max=16777216 net.core.rmem_default=8388608 2>/dev/null || true

port=20000
rcvbuf_errors() { awk '/Udp6RcvbufErrors/ {print $2}' /proc/net/snmp6; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_coap() { # port
  for _ in $(seq 100); do
    coap-client-notls -m get -B 1 "coap://[::1]:$1/.well-known/core" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server on port $1 never answered" >&2; return 1
}

start_server() { # name port -> sets PID and URIPATH
  case $1 in
    suitcase|suitcase-base)
      local exe="$BIN/suitcase"
      [ "$1" = suitcase-base ] && exe=${BASE_BIN:?BASE_BIN names the build to compare with}
      rm -rf "$work/data"
      taskset -c 0 "$exe" serve --data "$work/data" --coap "[::1]:$2" --http "[::1]:$(($2 + 1))" 2>"$work/suitcase.log" &
      PID=$!
      wait_coap "$2"
      # The CLI finds the server's local publisher token through SUITCASE_DATA.
      SUITCASE_DATA="$work/data" taskset -c 1 "$BIN/suitcase" publish --server "http://[::1]:$(($2 + 1))" \
        --publish-id bench --publish "$work/fw.bin" >/dev/null
      URIPATH=bench/fw.bin ;;
    libcoap)
      taskset -c 0 coap-server-notls -A ::1 -p "$2" -d 10 >/dev/null 2>&1 &
      PID=$!
      wait_coap "$2"
      coap-client-notls -m put -b 1024 -f "$work/fw.bin" "coap://[::1]:$2/fw.bin" >/dev/null
      URIPATH=fw.bin ;;
    aiocoap)
      taskset -c 0 aiocoap-fileserver --bind "[::1]:$2" "$work/www" >/dev/null 2>&1 &
      PID=$!
      wait_coap "$2"
      URIPATH=fw.bin ;;
  esac
}

[ -s "$OUT" ] || printf 'round\tserver\tn\tblocks_per_s\timages_per_s\tp50_ms\tp95_ms\tretransmissions\terrors\tserver_cpu_s\tpeak_rss_kb\trcvbuf_drops\n' | tee "$OUT"
for round in $(seq "$FIRST_ROUND" $((FIRST_ROUND + ROUNDS - 1))); do
  for n in $NS; do
    for server in $SERVERS; do
      case " $SKIP " in *" $server:$n "*) continue ;; esac
      port=$((port + 2))
      start_server "$server" "$port"
      t0=$(cpu_ticks "$PID"); d0=$(rcvbuf_errors)
      line=$(taskset -c 1 "$BIN/loadgen" --server "[::1]:$port" --path "$URIPATH" --expect "$work/fw.bin" \
               --devices "$n" --szx "$SZX" --label "$server" --json || true)
      t1=$(cpu_ticks "$PID"); d1=$(rcvbuf_errors)
      rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
      kill "$PID"; wait "$PID" 2>/dev/null || true
      python3 - "$round" "$server" "$n" "$line" "$t0" "$t1" "$rss" "$d0" "$d1" <<'PY' | tee -a "$OUT"
import json, os, sys
r, s, n, line, t0, t1, rss, d0, d1 = sys.argv[1:]
j = json.loads(line) if line.strip() else {"blocks_per_s": 0, "images_per_s": 0, "p50_ms": 0, "p95_ms": 0, "retransmissions": 0, "errors": int(n)}
hz = os.sysconf("SC_CLK_TCK")
print("\t".join(map(str, [r, s, n, j["blocks_per_s"], j["images_per_s"], j["p50_ms"], j["p95_ms"], j["retransmissions"], j["errors"], round((int(t1) - int(t0)) / hz, 2), rss, int(d1) - int(d0)])))
PY
    done
  done
done

python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["server"], int(r["n"])), []).append(r)
def med(k, key):
    return statistics.median(float(x[key]) for x in by[k])
print("\n| N | server | blocks/s median (min–max) | images/s | p95 ms | retx | errors | server CPU s | peak RSS MB | vs base | vs libcoap | vs aiocoap |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted({k[1] for k in by}):
    for s in ["suitcase", "suitcase-base", "libcoap", "aiocoap"]:
        k = (s, n)
        if k not in by: continue
        b = [float(x["blocks_per_s"]) for x in by[k]]
        ratio = lambda other: f'{med(k, "blocks_per_s") / med((other, n), "blocks_per_s"):.2f}×' if (other, n) in by and med((other, n), "blocks_per_s") > 0 else "–"
        print(f'| {n} | {s} | {statistics.median(b):,.0f} ({min(b):,.0f}–{max(b):,.0f}) | {med(k, "images_per_s"):.1f} | {med(k, "p95_ms"):.0f} | {sum(int(x["retransmissions"]) for x in by[k])} | {sum(int(x["errors"]) for x in by[k])} | {med(k, "server_cpu_s"):.2f} | {max(float(x["peak_rss_kb"]) for x in by[k]) / 1024:.1f} | {ratio("suitcase-base")} | {ratio("libcoap")} | {ratio("aiocoap")} |')
print(f"\nraw results: {sys.argv[1]}")
PY

# shellcheck disable=SC2086  # CHARTS_MERGE is a list of paths
"$BIN/charts" compare "$OUT" $CHARTS_MERGE --out "$CHARTS"
