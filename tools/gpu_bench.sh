#!/usr/bin/env bash
# The one prepared GPU measurement (issue 11): our train step beside a torch.compile'd PyTorch
# model of the same shapes (tools/torch_baseline.py), at 124M and 350M (and 1.3B with --with-1b),
# on one GPU in one call, then attention alone per implementation (tools/benchmark.py attention),
# then the comparison table, last. About 7 minutes on an H100.
#
#   tools/fetch_gpu_wheels.sh                  # here, once: wheels the GPU image lacks -> .whl/
#   tools/gpu_bench.sh [--with-1b] [--steps=N] # there: device `run`, carry [".whl"]
#   tools/gpu_bench.sh --cpu-smoke             # the same script on tiny shapes on CPU (CI)
#
# Each model is timed by `tools/benchmark.py train --json` and `tools/torch_baseline.py --json`;
# JSON lines go to $OUT/gpu_bench.jsonl as each run ends and the attention table to
# $OUT/attention.md when OUT is set (the device tool brings them back, also after a timeout).
# Then a jax.profiler trace of three 124M steps, summarized by tools/profile_summary.py
# ($OUT/profile.md, and the trace itself when under 15 MB). Then, while the script has run
# under --budget seconds (default 420), 124M variants one at a
# time: the same run again (the noise), unrolled layers, dots_no_batch remat, chunked logits,
# MaxText's XLA GPU flags; and the dry run's collective bytes under fsdp=8 on 8 mocked GPUs
# (the GPU compiler's answer to "are FSDP weights gathered in float32?").
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu
with_1b=0
steps=20
budget=420
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) mode=cpu ;;
    --with-1b) with_1b=1 ;;
    --steps=*) steps="${arg#--steps=}" ;;
    --budget=*) budget="${arg#--budget=}" ;;
    *)
      echo "usage: tools/gpu_bench.sh [--cpu-smoke] [--with-1b] [--steps=N] [--budget=SECONDS]" >&2
      exit 2
      ;;
  esac
done

PYTHON=${PYTHON:-python3}
if [ "$mode" = gpu ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=$(mktemp)
trap 'rm -f "$results" "$results".*' EXIT

if [ "$mode" = gpu ]; then
  "$PYTHON" -c "import jax; d = jax.devices()[0]; assert d.platform == 'gpu', d; print(jax.__version__, d.device_kind)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  configs=(configs/clm_124m.py configs/clm_350m.py)
  [ "$with_1b" = 1 ] && configs+=(configs/clm_1b.py)
  overrides=()
  torch_device=(--device=cuda)
  warmup=3
  attention_flags=(--config=configs/clm_124m.py "--lengths=512,1024,2048,4096,8192" --steps=10)
  variant_config=configs/clm_124m.py
  variants=(repeat scan_layers=False remat=dots_no_batch logits_chunk_length=256 xla_flags)
  # Compiled by the GPU compiler for 8 GPUs that one real GPU pretends to be (compile only).
  collectives_env=(JAX_MOCK_GPU_TOPOLOGY=1x8x1)
else
  export JAX_PLATFORMS=cpu
  configs=(configs/tiny_clm.py)
  overrides=(--config.train.batch_size=2 --config.train.seq_len=64)
  torch_device=(--device=cpu --no-compile)
  steps=2
  warmup=1
  attention_flags=(--lengths=64 --attention_tokens=128 --steps=1 --warmup=0)
  variant_config=configs/tiny_clm.py
  variants=(scan_layers=False)
  collectives_env=(XLA_FLAGS=--xla_force_host_platform_device_count=8)
fi

# The baseline's flags, from the same config (shapes, batch, tying) as ours.
torch_flags() {
  "$PYTHON" - "$1" "${overrides[@]}" <<'PY'
import sys

from jaxpretrain import config as config_lib

config = config_lib.load_config_file(sys.argv[1])
for override in sys.argv[2:]:
    key, value = override.removeprefix("--config.").split("=")
    section, name = key.split(".")
    config[section][name] = type(config[section][name])(value)
m, t = config.model, config.train
print(
    f"--layers={m.num_layers} --dim={m.embed_dim} --heads={m.num_heads} "
    f"--kv_heads={m.num_kv_heads} --head_dim={m.head_dim} --mlp_dim={m.mlp_dim} "
    f"--vocab={config_lib.resolve_vocab_size(config, None)} --seq_len={t.seq_len} "
    f"--batch={t.batch_size} "
    f"{'--tie' if m.tie_embeddings else '--no-tie'}"
)
PY
}

save_results() {  # what has been measured so far, to $OUT (it comes back even after a timeout)
  if [ -n "${OUT:-}" ]; then
    cat "$results.matmul" "$results" >"$OUT/gpu_bench.jsonl"
  fi
}

matmul_size=8192
[ "$mode" = cpu ] && matmul_size=256
"$PYTHON" tools/benchmark.py matmul --matmul_size="$matmul_size" >"$results.matmul"

for config in "${configs[@]}"; do
  name=$(basename "$config" .py)
  echo "== $name: jaxpretrain" >&2
  attention=auto
  # A kernel the card refuses at compile or run time must not cost the session its only GPU
  # call: measure the XLA attention path instead and say so in the row.
  if ! ours=$("$PYTHON" tools/benchmark.py train --config="$config" "${overrides[@]}" \
    --steps="$steps" --warmup="$warmup" --json | tail -n 1) || [ -z "$ours" ]; then
    # XLA attention keeps [heads, length, length] scores per layer (~46 GiB saved at 124M,
    # 32 x 1024, in the CPU-compiled dry run): recompute them rather than run out of memory.
    attention="xla + remat dots_no_batch (auto failed, see the log above)"
    echo "== $name: model.attention=auto failed; rerunning with model.attention=xla" >&2
    ours=$("$PYTHON" tools/benchmark.py train --config="$config" "${overrides[@]}" \
      --config.model.attention=xla --config.model.remat_policy=dots_no_batch \
      --steps="$steps" --warmup="$warmup" --json | tail -n 1)
  fi
  echo "{\"model\": \"$name\", \"side\": \"jaxpretrain\", \"attention\": \"$attention\", \"result\": $ours}" >>"$results"
  save_results
  echo "== $name: torch baseline" >&2
  # shellcheck disable=SC2046  # the flags are words on purpose
  theirs=$("$PYTHON" tools/torch_baseline.py $(torch_flags "$config") "${torch_device[@]}" \
    --steps="$steps" --warmup="$warmup" --json | tail -n 1)
  echo "{\"model\": \"$name\", \"side\": \"torch\", \"result\": $theirs}" >>"$results"
  save_results
  if [ "$name" = "$(basename "$variant_config" .py)" ]; then
    variant_attention=$attention
  fi
done

# Attention alone (forward + backward), each implementation this machine has, with and without
# segment ids: after the models, so a slow kernel cannot cost the comparison.
echo "== attention implementations" >&2
"$PYTHON" tools/benchmark.py attention "${attention_flags[@]}" | tee "$results.attention" >&2
if [ -n "${OUT:-}" ]; then
  cp "$results.attention" "$OUT/attention.md"
fi

# The variants and the profile run the 124M model as its row above ran: with the XLA-attention
# fallback if that row needed it.
variant_overrides=()
if [[ "${variant_attention:-auto}" == xla* ]]; then
  variant_overrides=(--config.model.attention=xla --config.model.remat_policy=dots_no_batch)
fi

# Where the 124M step's time goes (tiny on CPU): a jax.profiler trace of 3 steps, summarized.
echo "== profile of $(basename "$variant_config" .py)" >&2
profile_dir=$(mktemp -d)
if "$PYTHON" tools/benchmark.py train --config="$variant_config" "${overrides[@]}" \
  "${variant_overrides[@]}" --steps=2 --warmup=1 --json --profile_dir="$profile_dir" \
  --profile_steps=3 >/dev/null &&
  "$PYTHON" tools/profile_summary.py "$profile_dir" --steps=3 --top=25 >"$results.profile"; then
  cat "$results.profile" >&2
  if [ -n "${OUT:-}" ]; then
    cp "$results.profile" "$OUT/profile.md"
    # The trace itself, for a closer look here, when it fits what comes back (16 MiB a file).
    trace=$(find "$profile_dir" -name perfetto_trace.json.gz | head -n 1)
    if [ -n "$trace" ] && [ "$(stat -c %s "$trace")" -lt 15000000 ]; then
      cp "$trace" "$OUT/perfetto_trace.json.gz"
    fi
  fi
else
  echo "warning: profiling failed (see above); going on" >&2
fi

# What FSDP moves, by collective and dtype, as this platform's compiler builds it (the CPU
# compiler widens bfloat16 collectives to float32; the GPU's should not).
echo "== fsdp=8 collectives (dry run, tiny model, bfloat16)" >&2
# A mocked topology the runtime does not support must cost a warning, not the session's call.
if timeout 180 env "${collectives_env[@]}" "$PYTHON" -m jaxpretrain.main --mode=dry_run \
  --config=configs/tiny_clm.py --workdir="$(mktemp -d)" --config.mesh.data=1 \
  --config.mesh.fsdp=8 --config.model.dtype=bfloat16 --config.train.batch_size=16 \
  --config.train.seq_len=256 >"$results.collectives" 2>&1; then
  grep -E "^(mesh|collectives)" "$results.collectives" >&2
  if [ -n "${OUT:-}" ]; then cp "$results.collectives" "$OUT/collectives.txt"; fi
else
  echo "warning: the fsdp=8 dry run failed; its log:" >&2
  tail -n 20 "$results.collectives" >&2
fi

# 124M (tiny on CPU) variants, one flag each, while time is left: the first repeats the default
# run, so the other rows' differences can be read against the noise.
for variant in "${variants[@]}"; do
  if [ "$SECONDS" -ge "$budget" ]; then
    echo "== variants: $SECONDS s used of the --budget=$budget; skipping $variant and after" >&2
    break
  fi
  echo "== variant $variant (after $SECONDS s)" >&2
  flags=()
  variant_env=()
  case "$variant" in
    repeat) ;;
    remat=*) flags=(--config.model.remat_policy="${variant#remat=}") ;;
    xla_flags)
      variant_env=("XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false")
      ;;
    *) flags=(--config.model."$variant") ;;
  esac
  if row=$(env "${variant_env[@]}" "$PYTHON" tools/benchmark.py train --config="$variant_config" \
    "${overrides[@]}" "${variant_overrides[@]}" "${flags[@]}" --steps="$steps" \
    --warmup="$warmup" --json | tail -n 1) && [ -n "$row" ]; then
    echo "{\"model\": \"$(basename "$variant_config" .py)\", \"side\": \"variant\", \"variant\": \"$variant\", \"result\": $row}" >>"$results"
    save_results
  else
    echo "warning: variant $variant failed (see above); going on" >&2
  fi
done

"$PYTHON" - "$results" <<'PY'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
matmul = json.loads(open(sys.argv[1] + ".matmul").read())
spec = matmul["spec_tflops"]
print(
    f"{matmul['device_kind']}: bf16 matmul {matmul['size']}^3 reaches {matmul['tflops']:.3g} "
    f"TFLOP/s (spec sheet: {'unknown' if spec is None else f'{spec:.0f}'}); MFU below is "
    "against the spec sheet's dense bf16 peak"
)
by_model, attention = {}, {}
variants = [row for row in rows if row["side"] == "variant"]
for row in rows:
    if row["side"] == "variant":
        continue
    by_model.setdefault(row["model"], {})[row["side"]] = row["result"]
    if row["side"] == "jaxpretrain":
        attention[row["model"]] = row["attention"]


def percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def gib(value):
    return "n/a" if value is None or value != value else f"{value:.1f} GiB"


print("| model | ours attention | ours tok/s | ours MFU | torch tok/s | torch MFU | ours / torch | ours step (median, min-max) | ours mem | torch mem | ours compile |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for model, sides in by_model.items():
    ours, torch = sides["jaxpretrain"], sides["torch"]
    ratio = ours["tokens_per_second"] / torch["tokens_per_second"]
    print(
        f"| {model} | {attention[model]} | {ours['tokens_per_second']:,.0f} | {percent(ours['mfu'])} | "
        f"{torch['tokens_per_second']:,.0f} | {percent(torch.get('mfu'))} | {ratio:.2f}x | "
        f"{ours['step_ms_median']:.1f} ms ({ours['step_ms_min']:.1f}-{ours['step_ms_max']:.1f}) | "
        f"{gib(ours['peak_memory_gib'])} | {gib(torch.get('peak_memory_gib'))} | "
        f"{ours['compile_s']:.0f} s |"
    )
if variants:
    default = by_model[variants[0]["model"]]["jaxpretrain"]
    print()
    print(f"{variants[0]['model']} variants (one flag each; 'repeat' is the default run again):")
    print("| variant | tok/s | MFU | vs default | step (median, min-max) | mem | compile |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in variants:
        result = row["result"]
        print(
            f"| {row['variant']} | {result['tokens_per_second']:,.0f} | {percent(result['mfu'])} | "
            f"{result['tokens_per_second'] / default['tokens_per_second']:.3f}x | "
            f"{result['step_ms_median']:.1f} ms ({result['step_ms_min']:.1f}-"
            f"{result['step_ms_max']:.1f}) | {gib(result['peak_memory_gib'])} | "
            f"{result['compile_s']:.0f} s |"
        )
PY
