# Shared by the benchmark scripts (sourced). R[NAME#ROUND,WORKLOAD] holds a line of
# space-separated figures per run; ROUNDS the number of rounds.

# median TARGET WORKLOAD FIELD: the median of field FIELD (1-based) over the rounds.
median() {
  local r v=()
  for r in $(seq "$ROUNDS"); do v+=("$(awk -v f="$3" '{print $f}' <<<"${R[$1#$r,$2]}")"); done
  printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

# ratio A B: A / B with two decimals (0 when B is 0).
ratio() { python3 -c "print('%.2f' % ($1 / $2 if $2 else 0))"; }
