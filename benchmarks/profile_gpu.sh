#!/usr/bin/env bash
# Where one gpu sampling row's time goes, on the GPU machine: py-spy over sampling_bench (layout 4x4x4,
# 1080p H.264 keyframes) twice: every thread, idle or not (--idle --threads: what each thread waits on), then
# only the thread holding the GIL (--gil: whether one interpreter is the limit). The tallies by function
# go to stdout; $OUT/profile.tgz holds them with the raw stacks (benchmarks/_pyspy_top.py reads those again).
#
#   PYSPY=.gpu/py-spy OUT=$OUT bash benchmarks/profile_gpu.sh     # the py-spy binary travels in .gpu/
set -uo pipefail
cd "$(dirname "$0")/.."
PYSPY=${PYSPY:-.gpu/py-spy}
OUT=${OUT:-/tmp/quadvault-profile}
WORK=${WORK:-/root/quadvault-gpu-work}
PROFILE_ARGS=${PROFILE_ARGS:---videos 800 --cpu-videos 1 --gpu-exact-videos 0 --streams none --layouts 4x4x4 --clips 1080p30-h264-k1.0 --duration 8}
RATE=${RATE:-100}
RUN_S=${RUN_S:-35}  # each of the two profiled runs (the step's own limit would lose both)
if [ ! -x "$PYSPY" ]; then
  echo "profile: no py-spy at $PYSPY (copy the binary there: it travels in .gpu/)"
  exit 2
fi
mkdir -p "$OUT"
dir=$(mktemp -d)
failed=0
for kind in wall gil; do
  # --subprocesses: a process layout's decoding children (6p2x4x4f) are sampled too, each stack under its PID
  case $kind in wall) flags="--idle --threads --subprocesses" ;; gil) flags="--gil --threads --subprocesses" ;; esac
  started=$SECONDS
  # shellcheck disable=SC2086
  # py-spy writes its stacks when the profiled command ends: --duration ends the sampling in time
  timeout -k 10 "$((RUN_S + 20))" "$PYSPY" record $flags --nonblocking -r "$RATE" --duration "$RUN_S" -f raw \
    -o "$dir/profile_$kind.txt" -- python3 benchmarks/sampling_bench.py $PROFILE_ARGS --work "$WORK/sampling" \
    --out "$dir/sampling_$kind.json" >"$dir/run_$kind.log" 2>&1
  rc=$?
  echo "=== profile $kind: rc $rc, ${RATE} Hz, $((SECONDS - started))s"
  grep -E "fps|Error|error" "$dir/run_$kind.log" | tail -5
  if [ -s "$dir/profile_$kind.txt" ]; then
    python3 benchmarks/_pyspy_top.py "$dir/profile_$kind.txt" --within quadvault_dali/sampling --top 45 \
      | tee "$dir/top_$kind.txt"
  else
    echo "profile $kind: no stacks written"
    failed=1
  fi
  tar -czf "$OUT/profile.tgz" -C "$dir" .  # after each run: a step that times out keeps the first
done
echo "wrote $OUT/profile.tgz"
exit "$failed"
