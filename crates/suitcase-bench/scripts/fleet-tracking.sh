#!/usr/bin/env bash
# Fleet tracking on vs off, interleaved: does following every block cost the CoAP server?
#
#   crates/suitcase-bench/scripts/fleet-tracking.sh            # ROUNDS=3, NS="100 1000"
#
# Each trial starts a fresh server pinned to core 0 (SQLite fleet in its data directory),
# publishes the same 1 MiB image, registers N devices (`device import`, device i at
# [::1]:(30000+i)), then runs `loadgen` pinned to core 1: N devices sending from those
# ports, CON GETs with Block2 SZX 6, one request in flight, every block checked. `tracking`
# is the default server; `off` is the same binary with --no-tracking. After each tracked
# trial it reads /api/v1/fleet (rows the tracker wrote, its transactions, events dropped) and checks that
# every device is `downloaded` at 100 %. One TSV line per trial, then medians; last,
# `charts` draws fleet-tracking.svg from $OUT into ${CHARTS:-docs/charts} (replacing the one
# there; CHARTS=/tmp/charts for a trial run). Several result files are drawn merged with
#   target/release/charts fleet a.tsv b.tsv --out docs/charts
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-3}
NS=${NS:-"100 1000"}
IMAGE_BYTES=${IMAGE_BYTES:-1048576}
OUT=${OUT:-$(mktemp /tmp/fleet-bench.XXXXXX.tsv)}
BASE_PORT=30000
CHARTS=${CHARTS:-docs/charts}

cargo build --release -q -p suitcase -p suitcase-bench   # suitcase-bench: loadgen and charts
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
python3 -c "import random; random.seed(7); open('$work/fw.bin','wb').write(random.randbytes($IMAGE_BYTES))"
sysctl -qw net.core.rmem_max=16777216 net.core.wmem_max=16777216 2>/dev/null || true
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

port=21000
[ -s "$OUT" ] || printf 'round\tvariant\tn\tblocks_per_s\tp95_ms\terrors\tserver_cpu_s\tpeak_rss_kb\twall_s\trows_written\ttransactions\tblocks_dropped\tdownloaded\n' | tee "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for n in $NS; do
    python3 -c "
import sys
print('id,coap,class,groups')
for i in range($n): print(f'dev{i},[::1]:{$BASE_PORT + i},bench,b{i % 10}')" > "$work/devices.csv"
    for variant in tracking off; do
      port=$((port + 2))
      rm -rf "$work/data"
      flags=()
      [ "$variant" = off ] && flags+=(--no-tracking)
      taskset -c 0 "$BIN/suitcase" serve --data "$work/data" --coap "[::1]:$port" --http "[::1]:$((port + 1))" \
        "${flags[@]}" 2>"$work/suitcase.log" &
      PID=$!
      for _ in $(seq 100); do [ -s "$work/data/local-publisher.token" ] && break; sleep 0.1; done
      sleep 0.3
      export SUITCASE_DATA="$work/data" SUITCASE_SERVER="http://[::1]:$((port + 1))"
      taskset -c 1 "$BIN/suitcase" publish --publish-id bench --publish "$work/fw.bin" >/dev/null
      taskset -c 1 "$BIN/suitcase" device import "$work/devices.csv" >/dev/null
      t0=$(cpu_ticks "$PID")
      line=$(taskset -c 1 "$BIN/loadgen" --server "[::1]:$port" --path bench/fw.bin --expect "$work/fw.bin" \
               --devices "$n" --szx 6 --base-port "$BASE_PORT" --label "$variant" --json || true)
      t1=$(cpu_ticks "$PID")
      sleep 1.2  # one flush interval and then some: the last progress is written
      fleet=$(curl -s -H "Authorization: Bearer $(cat "$work/data/local-publisher.token")" "$SUITCASE_SERVER/api/v1/fleet")
      downloaded=$("$BIN/suitcase" device list --state downloaded --json | python3 -c 'import json,sys; print(sum(1 for d in json.load(sys.stdin) if d["progress"] == 100))')
      rss=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
      kill "$PID"; wait "$PID" 2>/dev/null || true
      python3 - "$round" "$variant" "$n" "$line" "$t0" "$t1" "$rss" "$fleet" "$downloaded" <<'PY' | tee -a "$OUT"
import json, os, sys
r, v, n, line, t0, t1, rss, fleet, downloaded = sys.argv[1:]
j = json.loads(line) if line.strip() else {"blocks_per_s": 0, "p95_ms": 0, "errors": int(n), "wall_s": 0}
c = json.loads(fleet)["counters"]
hz = os.sysconf("SC_CLK_TCK")
# The import wrote n rows in one transaction before the download: not the tracker's.
print("\t".join(map(str, [r, v, n, j["blocks_per_s"], j["p95_ms"], j["errors"], round((int(t1) - int(t0)) / hz, 2), rss, j["wall_s"], c["rows_written"] - int(n), c["transactions"] - 1, c["blocks_dropped"], downloaded])))
PY
    done
  done
done

python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["variant"], int(r["n"])), []).append(r)
med = lambda k, key: statistics.median(float(x[key]) for x in by[k])
print("\n| N | tracking | blocks/s median (min–max) | p95 ms | errors | server CPU s | peak RSS MB | rows written/s | transactions/s | events dropped | devices at 100 % | vs off |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted({k[1] for k in by}):
    for v in ["tracking", "off"]:
        k = (v, n)
        if k not in by: continue
        b = [float(x["blocks_per_s"]) for x in by[k]]
        rate = lambda key: statistics.median(float(x[key]) / float(x["wall_s"]) for x in by[k] if float(x["wall_s"]) > 0)
        ratio = f'{med(k, "blocks_per_s") / med(("off", n), "blocks_per_s"):.3f}' if ("off", n) in by else "–"
        print(f'| {n} | {v} | {statistics.median(b):,.0f} ({min(b):,.0f}–{max(b):,.0f}) | {med(k, "p95_ms"):.0f} | {sum(int(x["errors"]) for x in by[k])} | {med(k, "server_cpu_s"):.2f} | {max(float(x["peak_rss_kb"]) for x in by[k]) / 1024:.1f} | {rate("rows_written"):,.0f} | {rate("transactions"):.1f} | {sum(int(x["blocks_dropped"]) for x in by[k])} | {min(int(x["downloaded"]) for x in by[k])}/{n} | {ratio} |')
print(f"\nraw results: {sys.argv[1]}")
PY

"$BIN/charts" fleet "$OUT" --out "$CHARTS"
