#!/usr/bin/env bash
# The GPU check: everything vskip claims about TensorRT, on a machine that has it.
#
#   bash tools/gpu_check.sh [WORKDIR]        (default WORKDIR: gpu_check)
#
# Needs an NVIDIA GPU, TensorRT >= 10 and Polygraphy (pip install -e '.[trt,dev]').
# This project's CI and its development machines have neither, so this script has never
# run to the end (README, "Build a TensorRT engine"). It stops at the first failure and
# leaves every command's output in WORKDIR/log/, and writes WORKDIR/report.md.
#
# Steps, for a tiny Qwen2-VL and a Qwen2-0.5B-sized random checkpoint:
#   1. export fp32 / fp16 / bf16 (opset 20 and 23 for the tiny model);
#   2. compile the shipped plans (the four benchmark plans for the 0.5B model);
#   3. lint every graph for trt11 (and trt10 at opset 20);
#   4. build strongly typed engines (fp16, bf16) and validate them against PyTorch;
#   5. bench on TensorRT: vanilla against the compiled plans, interleaved (bench builds its
#      engines in memory from the graphs, with the default profile), then the same graphs'
#      engines built by vskip build (bench --engines);
#   6. the whole tiny MLLM on engines: vision, compiled prefill and decode engines, vskip
#      generate on them against ONNX Runtime, and a per-layer validation of an engine that
#      outputs every layer's hidden state (vskip-compile --hidden-states).
set -euo pipefail

WORK=${1:-gpu_check}
PLANS=vskip_compile/plans
REPORT="$WORK/report.md"

python - 2>/dev/null <<'EOF' || { echo "gpu_check: needs TensorRT and an NVIDIA GPU: pip install -e '.[trt,dev]' on a GPU machine" >&2; exit 2; }
import tensorrt  # noqa: F401
import polygraphy  # noqa: F401
EOF
mkdir -p "$WORK/log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$WORK/log/gpu.txt"

step() {  # step NAME COMMAND...: run, log, and record in the report
    local name=$1; shift
    echo "== $name: $*" >&2
    if "$@" > "$WORK/log/$name.txt" 2>&1; then
        echo "| $name | ok | \`$*\` |" >> "$REPORT"
    else
        echo "| $name | FAILED (see log/$name.txt) | \`$*\` |" >> "$REPORT"
        echo "gpu_check: $name failed; see $WORK/log/$name.txt" >&2
        exit 1
    fi
}

{
    echo "# vskip GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "GPU: $(cat "$WORK/log/gpu.txt" 2>/dev/null || echo unknown); TensorRT $(python -c 'import tensorrt; print(tensorrt.__version__)')"
    echo
    echo "| step | result | command |"
    echo "|---|---|---|"
} > "$REPORT"

# 1-4, the tiny model: every dtype, both opsets.
for opset in 20 23; do
    for dtype in float32 float16 bfloat16; do
        out="$WORK/tiny-$opset-$dtype"
        step "export-tiny-$opset-$dtype" vskip export tiny:qwen2_vl -o "$out" --opset "$opset" --dtype "$dtype" --prefill-only --force
        step "compile-tiny-$opset-$dtype" vskip-compile "$out/prefill.onnx" --plan "$PLANS/example_tiny.json" -o "$out/compiled.onnx" --force --target trt11
        if [ "$opset" = 20 ]; then
            step "lint10-tiny-$opset-$dtype" vskip lint "$out/compiled.onnx" --target trt10
        fi
        if [ "$dtype" != float32 ]; then
            step "build-tiny-$opset-$dtype" vskip build "$out/compiled.onnx" -o "$out/compiled.engine" --max-seq 512 --force
            step "validate-tiny-$opset-$dtype" vskip validate "$out/compiled.engine" --backend trt --json "$out/validate.json" --force
        fi
    done
done

# 1-5, the Qwen2-0.5B-sized checkpoint: fp16 and bf16 engines of the four benchmark plans.
CKPT="$WORK/qwen2-0.5b"
[ -d "$CKPT" ] || step make-checkpoint python tools/make_checkpoint.py -o "$CKPT"
for dtype in float16 bfloat16; do
    out="$WORK/big-$dtype"
    step "export-big-$dtype" vskip export "$CKPT" -o "$out" --dtype "$dtype" --prefill-only --force
    engines=()
    for plan in empty vskip_like opskip_like freeze_after2; do
        step "compile-big-$dtype-$plan" vskip-compile "$out/prefill.onnx" --plan "$PLANS/bench24_$plan.json" -o "$out/$plan.onnx" --force --target trt11
        step "build-big-$dtype-$plan" vskip build "$out/$plan.onnx" -o "$out/$plan.engine" --max-seq 2048 --timing-cache "$WORK/trt.cache" --force
        engines+=("$out/$plan.engine")
    done
    step "validate-big-$dtype" vskip validate "$out/opskip_like.engine" --backend trt --json "$out/validate.json" --force
    step "bench-big-$dtype" vskip bench "$out/prefill.onnx" --backend trt \
        --plan "$PLANS/bench24_vskip_like.json" --plan "$PLANS/bench24_opskip_like.json" --plan "$PLANS/bench24_freeze_after2.json" \
        --rounds 10 --warmup 3 --json "$out/bench.json" --markdown "$out/bench.md" --force
    cat "$out/bench.md" >> "$REPORT"
    # The same configs from engines vskip build wrote: compile into a workdir, build each
    # graph's engine there, then bench them (the rerun compiles the same bytes).
    work="$out/bench-work"
    bench_plans=(--plan "$PLANS/bench24_vskip_like.json" --plan "$PLANS/bench24_opskip_like.json")
    step "bench-stage-$dtype" vskip bench "$out/prefill.onnx" --backend ort-cpu "${bench_plans[@]}" \
        --rounds 1 --warmup 0 --workdir "$work" --force
    for graph in "$work"/prefill.vanilla.onnx "$work"/prefill.bench24_*.onnx; do
        step "build-bench-$dtype-$(basename "$graph" .onnx)" vskip build "$graph" --max-seq 2048 \
            --timing-cache "$WORK/trt.cache" --force
    done
    step "bench-engines-$dtype" vskip bench "$out/prefill.onnx" --backend trt --engines "${bench_plans[@]}" \
        --workdir "$work" --force --rounds 10 --warmup 3 --markdown "$out/bench-engines.md"
    cat "$out/bench-engines.md" >> "$REPORT"
done

# 6, the whole tiny MLLM on engines (fp16): vision, compiled prefill, decode.
out="$WORK/tiny-full-float16"
PROMPT="w5 w6 <|vision_start|><|image_pad|><|vision_end|> w7"
step export-tiny-full vskip export tiny:qwen2_vl -o "$out" --dtype float16 --force
step compile-tiny-full vskip-compile "$out/prefill.onnx" --plan "$PLANS/example_tiny.json" -o "$out/compiled.onnx" --force
step compile-tiny-hidden vskip-compile "$out/prefill.onnx" --plan "$PLANS/example_tiny.json" -o "$out/hidden.onnx" \
    --hidden-states --force
for graph in vision decode compiled hidden; do
    step "build-tiny-full-$graph" vskip build "$out/$graph.onnx" --max-seq 512 --force
done
step validate-tiny-per-layer vskip validate "$out/hidden.engine" --backend trt --per-layer \
    --json "$out/validate-per-layer.json" --force
step generate-tiny-ort vskip generate "$out" --compiled "$out/compiled.onnx" --prompt "$PROMPT" --image docs/demo.png \
    --max-new-tokens 8 --json "$out/generate-ort.json" --force
step generate-tiny-trt vskip generate "$out" --compiled "$out/compiled.onnx" --backend trt --engines --prompt "$PROMPT" \
    --image docs/demo.png --max-new-tokens 8 --json "$out/generate-trt.json" --force
# Reported, not gated: ONNX Runtime CPU computes fp16 chains in fp32, an engine in fp16.
python - "$out/generate-ort.json" "$out/generate-trt.json" >> "$REPORT" <<'EOF'
import json, sys
ort, trt = (json.load(open(p))["token_ids"][0] for p in sys.argv[1:])
same = sum(a == b for a, b in zip(ort, trt))
print(f"\ngenerate, tiny fp16, 8 tokens: ONNX Runtime {ort}, TensorRT engines {trt}: {same}/{len(ort)} the same\n")
EOF
echo "gpu_check: all steps passed; report in $REPORT" >&2
