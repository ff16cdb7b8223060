# Shared by the benchmark scripts (sourced). R[NAME#ROUND,WORKLOAD] holds a line of
# space-separated figures per run; ROUNDS the number of rounds.

# median TARGET WORKLOAD FIELD: the median of field FIELD (1-based) over the rounds.
median() {
  local r v=()
  for r in $(seq "$ROUNDS"); do v+=("$(awk -v f="$3" '{print $f}' <<<"${R[$1#$r,$2]}")"); done
  printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

# ratio A B: A / B with two decimals; "n/a" and status 1 when B is 0 or either is missing (not 0,
# which would read as a result: the best drain/bound, the worst speed-up).
ratio() {
  python3 - "${1:-}" "${2:-}" 2>/dev/null <<'EOF' || { echo n/a; return 1; }
import math, sys
a, b = float(sys.argv[1]), float(sys.argv[2])
if not b or not math.isfinite(a) or not math.isfinite(b):
    sys.exit(1)
print("%.2f" % (a / b))
EOF
}
