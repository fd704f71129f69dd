#!/usr/bin/env bash
# bench/run.sh — mailsift throughput, latency and memory, side by side with the
# loopback ceiling, in one run (issue item 11).  See bench/README.md.
#
#   direct:   smtp-source -> smtp-sink
#   mailsift: smtp-source -> mailsift serve -c bench/config.py -> smtp-sink
#
# Prints a Markdown report on stdout and writes it to bench/results-latest.md;
# progress goes to stderr.  Every process it starts is stopped by its PID on
# exit (trap), whatever happens.  Tunables (environment):
#   MAILSIFT_BENCH_PORT=10024  MAILSIFT_BENCH_SINK=10025  MAILSIFT_BENCH_STATE=$BENCH_WORK/state
#   BENCH_WORK=/tmp/mailsift-bench   BENCH_OUT=bench/results-latest.md
#   BENCH_SIZE=10240 BENCH_SESSIONS=10 BENCH_DIRECT_MSGS=20000 BENCH_MAILSIFT_MSGS=6000
#   BENCH_LATENCY_MSGS=500 BENCH_ROUNDS=5 BENCH_WORKERS=(cores) BENCH_RUN_TIMEOUT=120
#   BENCH_LOG_LEVEL=warning  BENCH_SOURCE_OPTS=  (extra smtp-source options, e.g. -d)
#   BENCH_QUIET_WAIT=30 (seconds to wait for the CPUs to be quiet before starting)
#   MAILSIFT=.venv/bin/mailsift  BENCH_CONFIG=bench/config.py
set -euo pipefail

# the command as given, with the tunables the caller set (for the report)
CMDLINE=""
for v in MAILSIFT_BENCH_PORT MAILSIFT_BENCH_SINK BENCH_SIZE BENCH_SESSIONS BENCH_DIRECT_MSGS \
  BENCH_MAILSIFT_MSGS BENCH_LATENCY_MSGS BENCH_ROUNDS BENCH_WORKERS BENCH_SOURCE_OPTS BENCH_LOG_LEVEL MAILSIFT; do
  if [ -n "${!v:-}" ]; then CMDLINE+="$v='${!v}' "; fi
done
CMDLINE+="bench/run.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MAILSIFT=${MAILSIFT:-$ROOT/.venv/bin/mailsift}
CONFIG=${BENCH_CONFIG:-$HERE/config.py}
WORK=${BENCH_WORK:-/tmp/mailsift-bench}
OUT=${BENCH_OUT:-$HERE/results-latest.md}
MS_PORT=${MAILSIFT_BENCH_PORT:-10024}
SINK_PORT=${MAILSIFT_BENCH_SINK:-10025}
export MAILSIFT_BENCH_PORT=$MS_PORT MAILSIFT_BENCH_SINK=$SINK_PORT
export MAILSIFT_BENCH_STATE=${MAILSIFT_BENCH_STATE:-$WORK/state}
SIZE=${BENCH_SIZE:-10240}
SESSIONS=${BENCH_SESSIONS:-10}
DIRECT_MSGS=${BENCH_DIRECT_MSGS:-20000}
MS_MSGS=${BENCH_MAILSIFT_MSGS:-6000}
LAT_MSGS=${BENCH_LATENCY_MSGS:-500}
ROUNDS=${BENCH_ROUNDS:-5}
LOG_LEVEL=${BENCH_LOG_LEVEL:-warning} # info logs one line per message
WORKERS=${BENCH_WORKERS:-}            # empty: mailsift's default, one worker per core
RUN_TIMEOUT=${BENCH_RUN_TIMEOUT:-120} # seconds, per smtp-source run
SAMPLE_EVERY=0.2                      # seconds between memory samples

SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SOURCE_ARGS=(-l "$SIZE" -f bench@example.test -t sink@example.test)
# shellcheck disable=SC2206 # word splitting intended: extra smtp-source options, e.g. BENCH_SOURCE_OPTS=-d (reuse connections)
SOURCE_ARGS+=(${BENCH_SOURCE_OPTS:-})

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }

# ----------------------------------------------------------------- processes
SINK_PID="" MS_PID="" SAMPLER_PID="" SOURCE_PID="" MS_TREE=""

# alive PID: the process exists and is not a zombie (no fork: /proc read by builtins)
alive() {
  local line
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  line=${line##*) }
  [ "${line%% *}" != Z ]
}

# children PID: direct children, from the kernel's parent->child links
# (/proc/PID/task/*/children); falls back to ps --ppid where that file is missing.
children() {
  local f c
  if [ -e "/proc/$1/task/$1/children" ]; then
    for f in /proc/"$1"/task/*/children; do
      c=()
      { read -r -a c < "$f"; } 2>/dev/null || true # no trailing newline: read "fails" but fills c
      [ ${#c[@]} -gt 0 ] && printf '%s\n' "${c[@]}"
    done
    return 0
  fi
  ps -o pid= --ppid "$1" 2>/dev/null || true
}
# tree PID: PID and all its descendants (parent-PID walk, never by name)
tree() {
  local queue=("$1") i=0 c
  while [ $i -lt ${#queue[@]} ]; do
    for c in $(children "${queue[$i]}"); do queue+=("$c"); done
    i=$((i + 1))
  done
  echo "${queue[@]}"
}

# stop PID SECONDS [PIDS...]: TERM PID, wait up to SECONDS for it and the given
# descendants, then KILL whatever of them is left; reap PID (our child).
stop() {
  local pid=$1 secs=$2 i p left; shift 2
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    left=0
    for p in "$pid" "$@"; do alive "$p" && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for p in "$pid" "$@"; do
    if alive "$p"; then say "pid $p did not stop in ${secs}s: KILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  STOP_RC=0
  wait "$pid" 2>/dev/null || STOP_RC=$?
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$SOURCE_PID" ]; then stop "$SOURCE_PID" 5; fi # timeout(1) passes TERM on to smtp-source
  if [ -n "$SAMPLER_PID" ]; then stop "$SAMPLER_PID" 2; fi
  if [ -n "$MS_PID" ]; then
    MS_TREE=$(tree "$MS_PID" 2>/dev/null || echo "$MS_TREE")
    # shellcheck disable=SC2086 # word splitting of the PID list is intended
    stop "$MS_PID" 15 ${MS_TREE#"$MS_PID"}
  fi
  if [ -n "$SINK_PID" ]; then stop "$SINK_PID" 5; fi
  exit $rc
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# wait_port PORT SECONDS PID: a TCP connect succeeds, giving up early if PID died
wait_port() {
  local port=$1 secs=$2 pid=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    alive "$pid" || return 1
    sleep 0.1
  done
  return 1
}
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ----------------------------------------------------------------- memory sampler
# Every SAMPLE_EVERY s: supervisor + all descendants, sum of VmRSS (status) and of
# Pss (smaps_rollup), in kB -> "time nprocs rss_kb pss_kb" lines in $WORK/mem.log.
sample_mem() {
  set +e
  local root=$1 p k v rss pss n
  while alive "$root"; do
    rss=0 pss=0 n=0
    for p in $(tree "$root"); do
      n=$((n + 1))
      { while read -r k v _; do [ "$k" = VmRSS: ] && rss=$((rss + v)); done < "/proc/$p/status"; } 2>/dev/null
      { while read -r k v _; do [ "$k" = Pss: ] && pss=$((pss + v)); done < "/proc/$p/smaps_rollup"; } 2>/dev/null
    done
    printf '%s %d %d %d\n' "$EPOCHREALTIME" "$n" "$rss" "$pss"
    sleep "$SAMPLE_EVERY"
  done
}

# tree_ticks PID: CPU time (user + system, clock ticks) used so far by PID and its descendants
tree_ticks() {
  local p line f t=0
  for p in $(tree "$1"); do
    { read -r line < "/proc/$p/stat"; } 2>/dev/null || continue
    read -r -a f <<< "${line##*) }" # f[11], f[12] = utime, stime (fields 14, 15)
    t=$((t + f[11] + f[12]))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)

# cpu_snap: "busy idle" jiffies of all CPUs
cpu_snap() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
# sink_count: messages smtp-sink has received so far (its -c counter)
sink_count() {
  local n
  n=$(tail -c 300 "$WORK/sink.out" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n 1 || true)
  echo "${n#mesg=}" | awk '{print $1 + 0}'
}

# run_source PORT SESSIONS MSGS: one smtp-source run; sets SECS and CPU (busy % of
# all CPUs); fails the bench on any SMTP error or when the sink lacks messages.
run_source() {
  local port=$1 sess=$2 msgs=$3 before after t0 t1 c0 c1 rc=0 i
  before=$(sink_count)
  local k0=0 k1=0
  if [ "$port" = "$MS_PORT" ]; then k0=$(tree_ticks "$MS_PID"); fi
  c0=$(cpu_snap); t0=$(now)
  # in the background, so that a signal to this script is handled at once (wait is interruptible)
  timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -s "$sess" -m "$msgs" "${SOURCE_ARGS[@]}" "127.0.0.1:$port" \
    2> "$WORK/source.err" &
  SOURCE_PID=$!
  wait "$SOURCE_PID" || rc=$?
  SOURCE_PID=""
  t1=$(now); c1=$(cpu_snap)
  if [ "$port" = "$MS_PORT" ]; then k1=$(tree_ticks "$MS_PID"); fi
  if [ $rc != 0 ] || [ -s "$WORK/source.err" ]; then
    cat "$WORK/source.err" >&2
    die "smtp-source -s $sess -m $msgs to port $port failed (rc=$rc$([ $rc = 124 ] && echo ", timed out after ${RUN_TIMEOUT}s"))"
  fi
  for ((i = 0; i < 50; i++)); do # the sink's counter is written just after it answers
    after=$(sink_count)
    [ $((after - before)) -ge "$msgs" ] && break
    sleep 0.05
  done
  [ $((after - before)) -eq "$msgs" ] || die "smtp-sink counted $((after - before)) new messages, expected $msgs"
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')
  CPU=$(echo "$c0 $c1" | awk '{b=$3-$1; i=$4-$2; printf "%.0f", (b+i) ? 100*b/(b+i) : 0}')
  MS_CPU_MS=$(awk -v k=$((k1 - k0)) -v hz="$HZ" -v m="$msgs" 'BEGIN{printf "%.3f", 1000*k/hz/m}') # mailsift CPU ms per message
}

# median / min / max of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END{print lo, hi}'; }
fmt() { awk -v x="$1" -v f="$2" 'BEGIN{printf f, x}'; }

# ----------------------------------------------------------------- preflight
T_START=$(now)
for tool in "$SMTP_SOURCE" "$SMTP_SINK" "$MAILSIFT"; do
  [ -x "$tool" ] || die "$tool not found (smtp-source/smtp-sink: apt-get install postfix; mailsift: pip install -e . in .venv)"
done
for port in "$MS_PORT" "$SINK_PORT"; do
  port_free "$port" || die "127.0.0.1:$port is already in use (set MAILSIFT_BENCH_PORT / MAILSIFT_BENCH_SINK)"
done
mkdir -p "$WORK" "$MAILSIFT_BENCH_STATE"
"$MAILSIFT" check-config -c "$CONFIG" > "$WORK/check-config.out" 2>&1 \
  || { cat "$WORK/check-config.out" >&2; die "mailsift check-config -c $CONFIG failed"; }

# other work skews every figure: wait (up to BENCH_QUIET_WAIT s) for a second in which the CPUs are at most 15% busy
for ((i = 0; i < ${BENCH_QUIET_WAIT:-30}; i++)); do
  c0=$(cpu_snap); sleep 1
  BUSY_BEFORE=$(echo "$c0 $(cpu_snap)" | awk '{b=$3-$1; i=$4-$2; printf "%.0f", (b+i) ? 100*b/(b+i) : 0}')
  if [ "$BUSY_BEFORE" -le 15 ]; then break; fi
  if [ "$i" = 0 ]; then say "the CPUs are ${BUSY_BEFORE}% busy with other work; waiting up to ${BENCH_QUIET_WAIT:-30} s for quiet"; fi
done
if [ "$BUSY_BEFORE" -gt 15 ]; then say "WARNING: the CPUs were ${BUSY_BEFORE}% busy before the bench; figures will be low and noisy"; fi
SNAP_BEGIN=$(cpu_snap) # with `times` at the end: how much CPU went to processes that are not ours

SINK_USER=()
if [ "$(id -u)" = 0 ]; then SINK_USER=(-u nobody); fi # smtp-sink refuses to run as root without -u

# ----------------------------------------------------------------- start
say "starting smtp-sink on 127.0.0.1:$SINK_PORT"
"$SMTP_SINK" "${SINK_USER[@]}" -c "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2> "$WORK/sink.err" &
SINK_PID=$!
wait_port "$SINK_PORT" 10 "$SINK_PID" || { cat "$WORK/sink.err" >&2; die "smtp-sink did not start"; }

MS_CMD=("$MAILSIFT" serve -c "$CONFIG" --log-level "$LOG_LEVEL" --drain-seconds 5)
if [ -n "$WORKERS" ]; then MS_CMD+=(-w "$WORKERS"); fi
say "starting ${MS_CMD[*]}"
"${MS_CMD[@]}" > "$WORK/mailsift.log" 2>&1 &
MS_PID=$!
wait_port "$MS_PORT" 30 "$MS_PID" || { cat "$WORK/mailsift.log" >&2; die "mailsift did not start on port $MS_PORT"; }
expected_workers=${WORKERS:-$(nproc)}
for ((i = 0; i < 50; i++)); do
  MS_TREE=$(tree "$MS_PID")
  n_workers=$(( $(wc -w <<< "$MS_TREE") - 1 ))
  [ "$n_workers" -ge "$expected_workers" ] && break
  sleep 0.1
done
say "mailsift supervisor $MS_PID, $n_workers worker(s): ${MS_TREE#"$MS_PID" }"
if [ "$n_workers" -lt "$expected_workers" ]; then say "WARNING: expected $expected_workers workers"; fi

sample_mem "$MS_PID" > "$WORK/mem.log" &
SAMPLER_PID=$!
sleep 0.5 # a few idle samples first

# ----------------------------------------------------------------- measure
WARM_START=$EPOCHREALTIME
say "warm-up (not reported): 500 messages through each path"
run_source "$SINK_PORT" "$SESSIONS" 500
run_source "$MS_PORT" "$SESSIONS" 500

D_RATE=() M_RATE=() D_LAT=() M_LAT=() D_CPU=() M_CPU=() M_CPUMSG=() M_CPUMSG1=()
for ((r = 1; r <= ROUNDS; r++)); do
  run_source "$SINK_PORT" "$SESSIONS" "$DIRECT_MSGS"
  D_RATE+=("$(awk -v m="$DIRECT_MSGS" -v s="$SECS" 'BEGIN{printf "%.1f", m/s}')"); D_CPU+=("$CPU")
  say "round $r/$ROUNDS direct   -s $SESSIONS -m $DIRECT_MSGS: ${SECS}s = ${D_RATE[-1]} msgs/s (CPU ${CPU}%)"
  run_source "$MS_PORT" "$SESSIONS" "$MS_MSGS"
  M_RATE+=("$(awk -v m="$MS_MSGS" -v s="$SECS" 'BEGIN{printf "%.1f", m/s}')"); M_CPU+=("$CPU"); M_CPUMSG+=("$MS_CPU_MS")
  say "round $r/$ROUNDS mailsift -s $SESSIONS -m $MS_MSGS: ${SECS}s = ${M_RATE[-1]} msgs/s (CPU ${CPU}%, mailsift ${MS_CPU_MS} ms CPU/msg)"
  run_source "$SINK_PORT" 1 "$LAT_MSGS"
  D_LAT+=("$(awk -v m="$LAT_MSGS" -v s="$SECS" 'BEGIN{printf "%.4f", 1000*s/m}')")
  say "round $r/$ROUNDS direct   -s 1 -m $LAT_MSGS: ${D_LAT[-1]} ms/msg"
  run_source "$MS_PORT" 1 "$LAT_MSGS"
  M_LAT+=("$(awk -v m="$LAT_MSGS" -v s="$SECS" 'BEGIN{printf "%.4f", 1000*s/m}')"); M_CPUMSG1+=("$MS_CPU_MS")
  say "round $r/$ROUNDS mailsift -s 1 -m $LAT_MSGS: ${M_LAT[-1]} ms/msg (mailsift ${MS_CPU_MS} ms CPU/msg)"
done

stop "$SAMPLER_PID" 2; SAMPLER_PID=""
MS_TREE=$(tree "$MS_PID")
say "stopping mailsift (SIGTERM, drain)"
T_STOP=$(now)
# shellcheck disable=SC2086
stop "$MS_PID" 15 ${MS_TREE#"$MS_PID"}
MS_PID="" MS_EXIT=$STOP_RC
STOP_SECS=$(awk -v a="$T_STOP" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}')
stop "$SINK_PID" 5; SINK_PID=""
# CPU of the machine during the bench not spent by this script and its children
# (smtp-source, smtp-sink, mailsift and its workers, all reaped by now): other work.
times > "$WORK/times.out" # in this shell: a pipe or $(...) would run it in a subshell, children 0
OURS=$(tail -n 1 "$WORK/times.out" | awk '{for (i = 1; i <= 2; i++) {split($i, p, "m"); sub("s", "", p[2]); t += p[1]*60 + p[2]}} END{print t}')
SNAP_END=$(cpu_snap)
FOREIGN=$(echo "$SNAP_BEGIN $SNAP_END" | awk -v ours="$OURS" -v hz="$HZ" \
  '{b=($3-$1)/hz; t=($3-$1+$4-$2)/hz; f=b-ours; if (f<0) f=0; printf "%.0f", t ? 100*f/t : 0}')
if grep -qE ' (ERROR|CRITICAL) |Traceback' "$WORK/mailsift.log"; then
  say "mailsift logged errors:"; grep -E ' (ERROR|CRITICAL) |Traceback' "$WORK/mailsift.log" | head -n 5 >&2
  MS_ERRORS="yes (see $WORK/mailsift.log)"
else
  MS_ERRORS=none
fi

# ----------------------------------------------------------------- report
read -r SAMPLES PEAK_RSS PEAK_PSS PEAK_N < <(awk '{n++; if ($3>r) r=$3; if ($4>p) p=$4; if ($2>k) k=$2} END{print n+0, r+0, p+0, k+0}' "$WORK/mem.log")
read -r IDLE_RSS IDLE_PSS < <(awk -v e="$WARM_START" '$1 < e {if ($3>r) r=$3; if ($4>p) p=$4} END{print r+0, p+0}' "$WORK/mem.log")
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

D_MED=$(median "${D_RATE[@]}"); M_MED=$(median "${M_RATE[@]}")
read -r D_LO D_HI < <(minmax "${D_RATE[@]}"); read -r M_LO M_HI < <(minmax "${M_RATE[@]}")
DL_MED=$(median "${D_LAT[@]}"); ML_MED=$(median "${M_LAT[@]}")
read -r DL_LO DL_HI < <(minmax "${D_LAT[@]}"); read -r ML_LO ML_HI < <(minmax "${M_LAT[@]}")
RATIO=$(awk -v m="$M_MED" -v d="$D_MED" 'BEGIN{printf "%.1f", 100*m/d}')
ADDED=$(awk -v m="$ML_MED" -v d="$DL_MED" 'BEGIN{printf "%.2f", m-d}')
RATIO_OK=$(awk -v x="$RATIO" 'BEGIN{print (x >= 25) ? "yes" : "**no**"}')
ADDED_OK=$(awk -v x="$ADDED" 'BEGIN{print (x <= 5) ? "yes" : "**no**"}')
T_TOTAL=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN{printf "%.0f", b - a}')

PY="$(dirname "$MAILSIFT")/python"
[ -x "$PY" ] || PY=$ROOT/.venv/bin/python
PY_VERSION=$("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "?")
VERSIONS=$("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("mailsift", "aiosmtpd", "uvloop")))' 2>/dev/null || echo "?")
GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src pyproject.toml 2>/dev/null)" ]; then
  GIT="$GIT (+ uncommitted changes in src/)"
fi
POSTFIX=$(dpkg-query -W -f '${Version}' postfix 2>/dev/null || echo "?")
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal/{printf "%.1f GB", $2/1048576}' /proc/meminfo)

OTHER_WARNING=""
if [ "$FOREIGN" -gt 10 ] || [ "$BUSY_BEFORE" -gt 15 ]; then
  OTHER_WARNING=" **WARNING: other work competed for the CPUs; these figures are low and not comparable: run again on a quiet machine.**"
  say "WARNING: other work competed for the CPUs (${FOREIGN}% of CPU time); figures not comparable"
fi
if [ -n "$WORKERS" ]; then W_OPT=" -w $WORKERS" W_NOTE="-w $WORKERS"; else W_OPT="" W_NOTE="default = one per core"; fi
report() {
  cat <<EOF
## mailsift benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')

Measured side by side in one run of \`$CMDLINE\` on loopback, interleaved over $ROUNDS rounds
(figures are medians, ranges are min–max over the rounds).

| path | msgs/s, ${SESSIONS} sessions (range) | ms per message, 1 session (range) | CPU busy, ${SESSIONS} sessions |
|---|---:|---:|---:|
| direct: smtp-source → smtp-sink | $(fmt "$D_MED" %.0f) ($(fmt "$D_LO" %.0f)–$(fmt "$D_HI" %.0f)) | $(fmt "$DL_MED" %.2f) ($(fmt "$DL_LO" %.2f)–$(fmt "$DL_HI" %.2f)) | $(median "${D_CPU[@]}")% |
| mailsift: smtp-source → mailsift → smtp-sink | $(fmt "$M_MED" %.0f) ($(fmt "$M_LO" %.0f)–$(fmt "$M_HI" %.0f)) | $(fmt "$ML_MED" %.2f) ($(fmt "$ML_LO" %.2f)–$(fmt "$ML_HI" %.2f)) | $(median "${M_CPU[@]}")% |

| measure | value | target | met |
|---|---:|---:|:-:|
| mailsift / direct throughput | ${RATIO}% | ≥ 25% | $RATIO_OK |
| added latency, 1 session (mailsift − direct per message) | ${ADDED} ms | ≤ 5 ms | $ADDED_OK |
| peak RSS, all mailsift processes (sum) | $(mb "$PEAK_RSS") MB | — | |
| peak PSS, all mailsift processes (sum) | $(mb "$PEAK_PSS") MB | — | |
| mailsift CPU time per message, ${SESSIONS} sessions / 1 session | $(fmt "$(median "${M_CPUMSG[@]}")" %.2f) / $(fmt "$(median "${M_CPUMSG1[@]}")" %.2f) ms | — | |
| idle after start: RSS / PSS (sum) | $(mb "$IDLE_RSS") / $(mb "$IDLE_PSS") MB | — | |

- workload: ${SIZE}-byte messages from \`smtp-source -s $SESSIONS -l $SIZE${BENCH_SOURCE_OPTS:+ $BENCH_SOURCE_OPTS}\` ($([[ " ${BENCH_SOURCE_OPTS:-} " == *" -d "* ]] && echo "connections reused" || echo "one message per connection"));
  per round: direct \`-m $DIRECT_MSGS\`, mailsift \`-m $MS_MSGS\`, then \`-s 1 -m $LAT_MSGS\` through each;
  a 500-message warm-up through each path first (not counted). Every message was counted at smtp-sink.
- sink: \`smtp-sink ${SINK_USER[*]} -c 127.0.0.1:$SINK_PORT 1024\`; mailsift: \`mailsift serve -c bench/config.py --log-level $LOG_LEVEL$W_OPT\`
  on 127.0.0.1:$MS_PORT (pipeline: \`parsemail(attach_name)\` + \`parsemail(regexp_scan)\`, reinjection to the sink).
- memory: supervisor + every descendant (parent-PID walk), \`VmRSS\` and \`smaps_rollup\` \`Pss\` summed,
  sampled every ${SAMPLE_EVERY} s ($SAMPLES samples, at most $PEAK_N processes); PSS counts pages shared after fork once.
- machine: $(nproc) CPUs ($CPU_MODEL), $MEM_TOTAL RAM, Linux $(uname -r); Python $PY_VERSION; $VERSIONS;
  mailsift workers: $n_workers ($W_NOTE); postfix $POSTFIX; git $GIT.
- other work on the machine (it skews every figure): CPUs ${BUSY_BEFORE}% busy in the second before the bench;
  during it, about ${FOREIGN}% of all CPU time went to processes this bench did not start (kernel threads and softirq included).$OTHER_WARNING
- mailsift errors logged: $MS_ERRORS; on SIGTERM it drained and exited with status $MS_EXIT in ${STOP_SECS} s. Whole bench: ${T_TOTAL} s.
EOF
}
report | tee "$OUT"
say "written to $OUT"
