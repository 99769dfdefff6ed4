# Shared by the soft-roce/bench-* scripts (sourced, not run): perftest in the guest, reading
# perftest's and interlink's figures from a raw output, and the table's rows.
# The caller sets $raw (the raw output file) before using the reading functions.

# perftest TOOL TAG RUN ARGS...: server in ilB on rxe_b0, client in ilA on rxe_a0 to 198.18.0.2
# (GID index 1); the client's output prefixed "TAG[RUN]: ", the server's "TAG-server[RUN]: ".
# Retries when the client came too early.
perftest() {
  local tool=$1 tag=$2 i=$3 port ok=0 try spid
  shift 3
  port=$((18515 + i))
  for try in 1 2 3; do
    ip netns exec ilB "$tool" -d rxe_b0 -x 1 -p "$port" "$@" >"/tmp/$tag-server-$i.log" 2>&1 &
    spid=$!
    sleep $((2 * try))   # the server must listen before the client connects (TCG is slow)
    if ip netns exec ilA timeout 300 "$tool" -d rxe_a0 -x 1 -p "$port" "$@" 198.18.0.2 >"/tmp/$tag-$i.log" 2>&1; then
      ok=1
    fi
    if ((ok)); then wait "$spid" 2>/dev/null || true; else kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
    ((ok)) && break
    echo "$tag run $i try $try failed:"; sed 's/^/  /' "/tmp/$tag-$i.log"
    port=$((port + 100))
  done
  ((ok)) || { echo "$tag run $i failed"; return 1; }
  while IFS= read -r line; do echo "$tag[$i]: $line"; done <"/tmp/$tag-$i.log"
  while IFS= read -r line; do echo "$tag-server[$i]: $line"; done <"/tmp/$tag-server-$i.log"
}

# Interleaved pairs. Each figure is measured as pairs: perftest's run, then at once interlink's
# run of the same figure, repeated (at least three pairs), and the table gives the MEDIAN of the
# per-pair ratios with their spread (min..max): a busy host slows both sides of a pair alike,
# where perftest and interlink minutes apart each met different load.
# il_pair TAG RUN BIN FIGURES [NAME=VALUE...]: pair RUN's interlink side: the bench BIN's verbs
# case with only the summary FIGURES (comma-separated; INTERLINK_BENCH_SUMMARY_ONLY=1,
# INTERLINK_BENCH_FIGURES), NAME=VALUE added to its environment; its output prefixed
# "TAG[RUN]: ".
il_pair() {
  local tag=$1 i=$2 bin=$3 figs=$4 line log
  shift 4
  log=/tmp/il-$tag-$i.log
  if ! env INTERLINK_BENCH_SUMMARY_ONLY=1 INTERLINK_BENCH_FIGURES="$figs" "$@" "$bin" --bench verbs_netns --noplot >"$log" 2>&1; then
    sed 's/^/  /' "$log"; echo "$tag run $i failed"; return 1
  fi
  while IFS= read -r line; do echo "$tag[$i]: $line"; done <"$log"
}

# Host CPU time used outside the caller's children while CMD... runs, appended to $raw as
# "host: cpus= secs= other_cpu_pct=" (the VM's CPUs are emulated on the host's: other busy
# processes distort every figure).
run_measuring_host() {
  local b0 b1 t0 t1 k0 k1 rc
  busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
  # CPU seconds of this shell's finished children (`times` must run in this shell: a $(...)
  # subshell has no children's times of its own); into the variable named $1
  kids() {
    times >"$raw.times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } print s }' "$raw.times")"
    rm -f "$raw.times"
  }
  b0=$(busy) t0=$(date +%s.%N)
  kids k0
  set +e
  "$@" | tee "$raw"
  rc=${PIPESTATUS[0]}
  set -e
  b1=$(busy) t1=$(date +%s.%N)
  kids k1
  awk -v b="$((b1 - b0))" -v hz="$(getconf CLK_TCK)" -v k0="$k0" -v k1="$k1" -v t0="$t0" -v t1="$t1" -v n="$(nproc)" \
    'BEGIN { o = b / hz - (k1 - k0); if (o < 0) o = 0; printf "host: cpus=%d secs=%.0f other_cpu_pct=%.0f\n", n, t1 - t0, 100 * o / ((t1 - t0) * n) }' >>"$raw"
  return "$rc"
}

# median of the numbers on stdin
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# pt TAG COLUMN: the client's value of the column whose header starts with COLUMN, one per run
# (the data line follows the header line that names the column; headers with blanks such as
# "BW average[MB/sec]" or "99% percentile[usec]" are named with "_": BW_average, 99%_percentile)
pt() { pt_runs "$@" | cut -d" " -f2; }
# pt_runs TAG COLUMN: as pt, "RUN VALUE" per line
pt_runs() {
  sed -n "s/^$1\[\([0-9]*\)\]: /\1 /p" "$raw" | awk -v col="$2" '
    { run = $1; $1 = ""; $0 = substr($0, 2) }
    idx[run] == "" {
      h = $0; gsub(/BW /, "BW_", h); gsub(/% percentile/, "%_percentile", h)
      if (index(h, col)) {
        n = split(h, f, " "); for (i = 1; i <= n; i++) if (index(f[i], col) == 1) { idx[run] = i; next }
      }
    }
    idx[run] != "" && !done[run] && $1 ~ /^[0-9]+$/ {
      # a run that measured nothing (perftest prints "inf") counts as no run
      if ($(idx[run]) ~ /^[0-9.]+$/) print run, $(idx[run]); done[run] = 1 }'
}
# nruns TAG: how many runs of TAG the raw output holds
nruns() { sed -n "s/^$1\[\([0-9]*\)\]: .*/\1/p" "$raw" | sort -un | wc -l; }
# summary BENCH KEY FIELD: field FIELD of interlink's summary line "BENCH-bench: key=KEY ..."
summary() { sed -n "s|^$1-bench: key=$2 .*\<$3=\([0-9.]*\).*|\1|p" "$raw" | head -n 1; }

# pair_summary TAG BENCH KEY FIELD: field FIELD of the summary line of KEY in each interlink
# run TAG[RUN] of the pairs, "RUN VALUE" per line
pair_summary() { sed -n "s|^$1\[\([0-9]*\)\]: $2-bench: key=$3 .*\<$4=\([0-9.]*\).*|\1 \2|p" "$raw"; }
# values: the values of "RUN VALUE" lines on stdin
values() { cut -d" " -f2; }
# pair_ratios NUMS DENS FACTOR: NUM / (FACTOR x DEN) of each pair, the two "RUN VALUE" lists
# joined on RUN; one ratio per line
pair_ratios() {
  join <(sort -k1,1 <<<"$1") <(sort -k1,1 <<<"$2") |
    awk -v f="$3" '$2 > 0 && $3 * f > 0 { printf "%.4f\n", $2 / ($3 * f) }'
}
# median_ratio TARGET le|ge: the median of the per-pair ratios on stdin against TARGET, with
# their spread: "1.05x (target <= 1.10x: met), median of 3 pairs, spread 0.98..1.20"; without
# TARGET the same without the target
median_ratio() {
  sort -g | awk -v t="${1:-}" -v dir="${2:-}" '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (t == "") printf "%.2fx", m
    else printf "%.2fx (target %s %.2fx: %s)", m, (dir == "le" ? "<=" : ">="), t, ((dir == "le" ? m <= t : m >= t) ? "met" : "not met")
    printf ", median of %d pair%s, spread %.2f..%.2f\n", NR, (NR == 1 ? "" : "s"), v[1], v[NR] }'
}

calc() { awk "BEGIN { v = $1; printf \"%.2f\", v }" 2>/dev/null || echo n/a; }
# ratio NUM DEN TARGET le|ge
ratio() { awk -v n="$1" -v d="$2" -v t="$3" -v dir="$4" 'BEGIN {
  if (d + 0 <= 0 || n + 0 <= 0) { print "n/a"; exit }
  r = n / d; ok = (dir == "le" ? r <= t : r >= t)
  printf "%.2fx (target %s %.2fx: %s)", r, (dir == "le" ? "<=" : ">="), t, (ok ? "met" : "not met") }'; }
# row LABEL VALUE [NOTE]: one table row (numbers with 2 decimals)
row() {
  local v=$2
  [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] && v=$(printf '%.2f' "$v")
  printf '  %-66s %12s%s\n' "$1" "$v" "${3:+  $3}"
}
# host_line: the table's line on the host's load during the VM run
host_line() {
  local other
  other=$(sed -n 's/^host: .*other_cpu_pct=\([0-9]*\).*/\1/p' "$raw" | tail -n 1)
  [[ -n $other ]] || return 0
  echo "Host: other processes used ${other}% of the host's $(sed -n 's/^host: cpus=\([0-9]*\).*/\1/p' "$raw" | tail -n 1) CPUs during the VM run$( ((other > 10)) && echo " -- WARNING: the figures are disturbed, run again on a quiet host")."
}
