#!/usr/bin/env bash
# A rollout of a new version to N simulated devices (fleetsim), measured.
#
#   crates/suitcase-bench/scripts/rollout-sim.sh            # N=10000 LOSS=0.05 MODE=coap
#   N=1000 LOSS=0 FAIL=0.1 WAVES=10%,100% crates/suitcase-bench/scripts/rollout-sim.sh
#
# Starts a fresh server (SQLite fleet in a temporary data directory), publishes v1 of a
# random IMAGE_BYTES image, starts `fleetsim` with N devices running v1's sequence number
# (registered through POST /api/v1/devices, device i at 127.0.0.1:(BASE_PORT + i); in observe
# mode 8 devices per loopback address, 127.0.0.1 and up, the server's per-address Observe
# limit), publishes v2, then `suitcase rollout create --publish-id sim --waves $WAVES
# --max-concurrent $MAXC --halt-on-errors $HALT --success $SUCCESS --trigger $MODE --json` and
# polls `suitcase rollout status ID --json` every second until the state is finished, halted
# or aborted. Then fleetsim gets SIGINT and prints its JSON summary.
#
# TRIGGER=notify does without rollouts (servers before them): coap mode sends the triggers
# with `suitcase notify` (1,000 devices per request, all requests at once); observe mode
# lets the publish of v2 notify the observers; fleetsim ends 10 s after the last activity.
#
# Prints one TSV line (header first; appended to $OUT too when set) and fleetsim's JSON:
# waves_s is each wave's start–finish in seconds after the rollout's start_at; server_cpu_s
# is the server's utime+stime from the rollout's creation to its end; server_peak_rss_kb its
# VmHWM.
#
# Environment: N (10000), LOSS (0.05), FAIL (0), MODE (coap | observe), IMAGE_BYTES (65536),
# WAVES (10%,50%,100%), MAXC (500), HALT (5%), SUCCESS (95%), TRIGGER (rollout | notify),
# SEED (1), ACK_TIMEOUT_MS (2000), BASE_PORT (20000), PORT (15683: CoAP; HTTP on PORT+1),
# TIMEOUT (3600 s of polling at most), GRACE (3 s between the end and fleetsim's summary),
# KEEP (1: keep the work directory with the server's and fleetsim's logs, and say where),
# CLUSTER (0 | 1).
#
# CLUSTER=1: the same against two nodes of one cluster (a real PostgreSQL and s3s-fs,
# started here, see pg-s3.sh): node A starts first and holds the fleet's lease; fleetsim,
# the publishes and the rollout talk to node B, which hands every registration, report and
# download it sees to A through PostgreSQL, while A sends the triggers. server_cpu_s and
# server_peak_rss_kb are then B's, leader_cpu_s A's.
set -euo pipefail
cd "$(dirname "$0")/../../.."

N=${N:-10000}
LOSS=${LOSS:-0.05}
FAIL=${FAIL:-0}
MODE=${MODE:-coap}
IMAGE_BYTES=${IMAGE_BYTES:-65536}
WAVES=${WAVES:-10%,50%,100%}
MAXC=${MAXC:-500}
HALT=${HALT:-5%}
SUCCESS=${SUCCESS:-95%}
TRIGGER=${TRIGGER:-rollout}
SEED=${SEED:-1}
ACK_TIMEOUT_MS=${ACK_TIMEOUT_MS:-2000}
BASE_PORT=${BASE_PORT:-20000}
PORT=${PORT:-15683}
TIMEOUT=${TIMEOUT:-3600}
GRACE=${GRACE:-3}
KEEP=${KEEP:-0}
CLUSTER=${CLUSTER:-0}
OUT=${OUT:-}
case "$MODE" in coap | observe) ;; *) echo "MODE must be coap or observe" >&2; exit 2 ;; esac
case "$TRIGGER" in rollout | notify) ;; *) echo "TRIGGER must be rollout or notify" >&2; exit 2 ;; esac

cargo build --release -q -p suitcase -p suitcase-bench
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d)
SPID= FPID=
cleanup() {
  for p in $FPID $SPID $APID; do kill "$p" 2>/dev/null || true; done
  pkill -P $$ 2>/dev/null || true   # PostgreSQL and s3s-fs (CLUSTER=1)
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
NODE=() APID=
if [ "$CLUSTER" = 1 ]; then
  source crates/suitcase-bench/scripts/pg-s3.sh
  "$BIN/suitcase" keygen --out "$work/key.pem" >/dev/null
  NODE=("${SHARED[@]}" --key "$work/key.pem")
  "$BIN/suitcase" serve --data "$work/leader" --coap "127.0.0.1:$((PORT + 2))" --http "127.0.0.1:$((PORT + 3))" \
    "${NODE[@]}" 2>"$work/leader.log" &
  APID=$!
  for _ in $(seq 100); do grep -q "listening for HTTP" "$work/leader.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "holds the lease" "$work/leader.log" || { cat "$work/leader.log" >&2; exit 1; }
fi
ulimit -n "$((N + 1024))" 2>/dev/null || true   # fleetsim: one socket per device
python3 -c "import os; open('$work/fw.bin','wb').write(os.urandom($IMAGE_BYTES))"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now_ms() { date +%s%3N; }

"$BIN/suitcase" serve --data "$work/data" --coap "127.0.0.1:$PORT" --http "127.0.0.1:$((PORT + 1))" \
  "${NODE[@]}" 2>"$work/suitcase.log" &
SPID=$!
for _ in $(seq 100); do [ -s "$work/data/local-publisher.token" ] && break; sleep 0.1; done
[ -s "$work/data/local-publisher.token" ] || { cat "$work/suitcase.log" >&2; exit 1; }
sleep 0.3
export SUITCASE_DATA="$work/data" SUITCASE_SERVER="http://127.0.0.1:$((PORT + 1))"
TOKEN=$(cat "$work/data/local-publisher.token")
seq_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["sequence_number"])'; }

seq1=$("$BIN/suitcase" publish --publish-id sim --publish "$work/fw.bin" --json --quiet | seq_of)
idle=()
[ "$TRIGGER" = notify ] && idle=(--exit-when-idle 10)
"$BIN/fleetsim" --devices "$N" --mode "$MODE" --server "127.0.0.1:$PORT" --publish-id sim \
  --register "$SUITCASE_SERVER" --token "$TOKEN" --running-seq "$seq1" --base-port "$BASE_PORT" \
  --loss "$LOSS" --fail "$FAIL" --seed "$SEED" --ack-timeout-ms "$ACK_TIMEOUT_MS" "${idle[@]}" \
  >"$work/fleetsim.json" 2>"$work/fleetsim.log" &
FPID=$!
until grep -q '^fleetsim: ready' "$work/fleetsim.log"; do
  kill -0 "$FPID" 2>/dev/null || { cat "$work/fleetsim.log" >&2; exit 1; }
  sleep 0.2
done

# Observe: v1 goes out through a rollout first (every device runs it already, so it
# finishes at once); from then on the server holds v2 back from observers until its own
# rollout lets them through.
if [ "$TRIGGER" = rollout ] && [ "$MODE" = observe ]; then
  first=$("$BIN/suitcase" rollout create --publish-id sim --trigger observe --json)
  fid=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$first")
  until "$BIN/suitcase" rollout status "$fid" --json | grep -q '"state":"finished"'; do sleep 0.5; done
fi

python3 -c "import os; open('$work/fw.bin','wb').write(os.urandom($IMAGE_BYTES))"
seq2=$("$BIN/suitcase" publish --publish-id sim --publish "$work/fw.bin" --json --quiet | seq_of)
t0=$(now_ms)
c0=$(cpu_ticks "$SPID")
a0=0; [ -n "$APID" ] && a0=$(cpu_ticks "$APID")
state=- status='{}'
if [ "$TRIGGER" = rollout ]; then
  created=$("$BIN/suitcase" rollout create --publish-id sim --waves "$WAVES" --max-concurrent "$MAXC" \
    --halt-on-errors "$HALT" --success "$SUCCESS" --trigger "$MODE" --json)
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    sleep 1
    status=$("$BIN/suitcase" rollout status "$id" --json)
    state=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["state"])' "$status")
    case "$state" in finished | halted | aborted) break ;; esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "rollout $id still $state after ${TIMEOUT}s" >&2
      break
    fi
  done
  c1=$(cpu_ticks "$SPID")
  a1=0; [ -n "$APID" ] && a1=$(cpu_ticks "$APID")
  sleep "$GRACE"
  kill -INT "$FPID"
elif [ "$MODE" = coap ]; then
  devs=$(python3 -c "print('\n'.join(f'127.0.0.1:{$BASE_PORT + i}' for i in range($N)))")
  pids=()
  while read -r chunk; do
    # shellcheck disable=SC2086 # one argument per device
    "$BIN/suitcase" notify --publish-id sim $chunk >/dev/null &
    pids+=($!)
  done < <(echo "$devs" | xargs -n 1000 echo)
  for p in "${pids[@]}"; do wait "$p"; done
fi
wait "$FPID" || true
FPID=
[ "$TRIGGER" = rollout ] || { c1=$(cpu_ticks "$SPID"); a1=0; [ -n "$APID" ] && a1=$(cpu_ticks "$APID"); }
t1=$(now_ms)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$SPID/status")
sim=$(cat "$work/fleetsim.json")
[ -n "$sim" ] || { tail -20 "$work/fleetsim.log" >&2; exit 1; }

line=$(python3 - "$MODE" "$N" "$LOSS" "$FAIL" "$TRIGGER" "$WAVES" "$MAXC" "$state" "$status" "$sim" \
  "$t0" "$t1" "$c0" "$c1" "$rss" "$seq2" "$CLUSTER" "$a0" "$a1" <<'PY'
import json, os, sys
mode, n, loss, fail, trigger, waves, maxc, state, status, sim, t0, t1, c0, c1, rss, seq2, cluster, a0, a1 = sys.argv[1:]
st, s = json.loads(status), json.loads(sim)
hz = os.sysconf("SC_CLK_TCK")
start = st.get("start_at") or int(t0)
end = st.get("ended_at") or s.get("last_report_ms") or int(t1)
sec = lambda ms: "-" if ms is None else f"{(ms - start) / 1000:.1f}"
waves_s = ",".join(f'{sec(w.get("started_at"))}-{sec(w.get("finished_at"))}' for w in st.get("waves", [])) or "-"
tot = st.get("totals", {})
lat = s.get("latency_ms", {})
print("\t".join(map(str, [
    mode, n, loss, fail, trigger if trigger == "notify" else waves, maxc, state, st.get("reason") or "-",
    f"{(end - start) / 1000:.1f}", waves_s, tot.get("installed", "-"), tot.get("failed", "-"),
    s["downloads_completed"], s["reports_acked"], s["failures_reported"], s["update_errors"],
    s["retransmissions"], lat.get("p50"), lat.get("p99"), s["cpu_s"],
    round((int(c1) - int(c0)) / hz, 2), rss,
    "cluster" if cluster == "1" else "single", round((int(a1) - int(a0)) / hz, 2),
])))
PY
)
header=$'mode\tn\tloss\tfail\twaves\tmax_concurrent\tstate\treason\twall_s\twaves_s\tinstalled\tfailed\tdownloads\treports_acked\tfailures_reported\tupdate_errors\tretransmissions\tlatency_p50_ms\tlatency_p99_ms\tfleetsim_cpu_s\tserver_cpu_s\tserver_peak_rss_kb'
printf '%s\n%s\n' "$header" "$line"
if [ -n "$OUT" ]; then
  [ -s "$OUT" ] || echo "$header" >"$OUT"
  echo "$line" >>"$OUT"
fi
echo "$sim"
