"""Measures throughput on this machine and prints Markdown rows for docs/performance.md.

    python tools/benchmark.py train --config=configs/tiny_clm.py --steps=20
    python tools/benchmark.py train --config=configs/tiny_clm.py --profile_dir=/tmp/profile
    python tools/profile_summary.py /tmp/profile --steps=3   # where the step's time goes
    python tools/benchmark.py data --documents=2000 --corpus_mb=20
    python tools/benchmark.py matmul --matmul_size=8192   # the device's bf16 matmul FLOP/s
    python tools/benchmark.py loop --config=configs/tiny_clm.py --steps=20 --documents=400
    python tools/benchmark.py checkpoint --config=configs/tiny_clm.py
    python tools/benchmark.py attention --config=configs/clm_124m.py --lengths=512,2048,8192

    # a mesh on 8 fake CPU devices (correctness scale, not speed):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/benchmark.py train \
        --config=configs/tiny_clm.py --config.mesh.data=2 --config.mesh.pipe=4 \
        --config.mesh.microbatches=4

`train` times jitted train steps on synthetic full-length batches (the input pipeline is measured
apart), after compilation and warm-up steps. `data` times the curation blocks (cleaning, each
filter family, MinHash signatures beside datasketch's `MinHash.update_batch`) on one core, on the
prose documents of the embedded stdlib corpus, then the whole curation pipeline on a generated
web-like corpus (`--corpus_mb`) with 1 and 2 workers, in GB per core-hour. Timings are never
asserted in tests.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxpretrain import flops, objectives, steps
from jaxpretrain import state as state_lib
from jaxpretrain.model.pipeline import bubble_fraction

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_DOCUMENTS = flags.DEFINE_integer(
    "documents", 2000, "data: documents timed per block; loop: documents prepared."
)
_CORPUS_MB = flags.DEFINE_float(
    "corpus_mb", 20.0, "data: size of the generated web-like corpus for the whole-pipeline rows."
)
_JSON = flags.DEFINE_bool(
    "json", False, "train, loop, checkpoint: print the figures as one JSON line instead."
)
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 8192, "matmul: square matrix size.")
_LENGTHS = flags.DEFINE_list(
    "lengths", ["512", "1024", "2048", "4096", "8192"], "attention: sequence lengths timed."
)
_ATTENTION_TOKENS = flags.DEFINE_integer(
    "attention_tokens", 16384, "attention: tokens per call (batch = tokens // length)."
)
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir",
    "",
    "train: after the timed steps, trace --profile_steps more with jax.profiler into this folder "
    "(read it with tools/profile_summary.py).",
)
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "train: steps traced for --profile_dir.")
_APPEND_TO_DOCS = flags.DEFINE_bool(
    "append_to_docs",
    False,
    "train, loop, checkpoint, attention: also append the table (with the date, the machine and "
    "the command) to docs/performance.md.",
)


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_weights": np.ones((batch_size, seq_len), np.float32),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "positions": positions.copy(),
        "bidirectional": np.zeros((batch_size, seq_len), np.int32),
    }


def benchmark_train(config) -> dict[str, float]:
    setup = state_lib.setup(config)
    model_cfg, batch_sharding, mesh = setup.model_config, setup.batch_sharding, setup.mesh
    step_fn = steps.make_train_step(
        setup.layout,
        objectives.get(config.objective.name),
        setup.tx,
        setup.schedule,
        batch_sharding,
        grad_accum_steps=config.train.grad_accum_steps,
    )
    state = state_lib.init_state(model_cfg, setup.tx, setup.layout, config.train.seed)
    batch = synthetic_batch(config.train.batch_size, config.train.seq_len, model_cfg.vocab_size, 0)
    batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}

    compile_start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - compile_start
    for _ in range(_WARMUP.value):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    seconds_per_step = (time.perf_counter() - start) / _STEPS.value
    # Then each step on its own (a host sync apiece) for the spread: the figures above are from
    # back-to-back steps, as training runs them.
    single_steps = []
    for _ in range(min(_STEPS.value, 10)):
        begin = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        single_steps.append(time.perf_counter() - begin)
    if _PROFILE_DIR.value:
        # After the timing, so tracing overhead never reaches the figures.
        with jax.profiler.trace(_PROFILE_DIR.value, create_perfetto_trace=True):
            for _ in range(_PROFILE_STEPS.value):
                state, metrics = step_fn(state, batch)
            jax.block_until_ready(metrics)

    tokens_per_second = config.train.batch_size * config.train.seq_len / seconds_per_step
    peak = flops.peak_flops_per_device(jax.devices()[0], config.train.peak_tflops_per_device)
    flops_per_token = flops.train_flops_per_token(model_cfg, config.train.seq_len)
    memory = jax.devices()[0].memory_stats() or {}
    mesh_label = " ".join(f"{axis}={size}" for axis, size in mesh.shape.items() if size > 1)
    stages, repeats = model_cfg.pipeline_stages, model_cfg.pipeline_repeats
    microbatches = model_cfg.pipeline_microbatches
    if stages > 1:
        bubble = bubble_fraction(stages, repeats, microbatches)
        mesh_label += f" M={microbatches} R={repeats} (bubble {bubble:.2f})"
    return {
        "mesh": mesh_label or "one device",
        "params_m": sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6,
        "compile_s": compile_seconds,
        "step_ms": seconds_per_step * 1e3,
        "step_ms_median": float(np.median(single_steps)) * 1e3,
        "step_ms_min": min(single_steps) * 1e3,
        "step_ms_max": max(single_steps) * 1e3,
        "flops_per_token": flops_per_token,
        "device_kind": jax.devices()[0].device_kind,
        "tokens_per_second": tokens_per_second,
        "mfu": flops.mfu(tokens_per_second, flops_per_token, peak, mesh.size),
        "peak_memory_gib": memory.get("peak_bytes_in_use", float("nan")) / 2**30,
        "loss": float(jnp.asarray(metrics["loss"])),
    }


def benchmark_loop(config) -> dict[str, float]:
    """The trainer's own loop (the grain loader on prepared data, logging, asynchronous
    checkpoints every few steps) beside the bare step at the same shapes.

    The loop's figure is the median of its logged `padded_tokens_per_second` (every row
    position, as the bare step counts): training time with the loader and logging in it, and
    the time `checkpoint` measures (a save blocking the loop) left out.
    """
    import tempfile

    from jaxpretrain import train
    from jaxpretrain.curate import prepare
    from jaxpretrain.metrics_log import read as read_metrics

    bare = benchmark_train(config)
    loop_config = config.copy_and_resolve_references()
    steps_total = _WARMUP.value + _STEPS.value
    loop_config.train.steps = steps_total
    loop_config.train.log_every = max(1, _STEPS.value // 4)
    loop_config.eval.every = 0
    loop_config.checkpoint.every = max(1, steps_total // 2)
    with tempfile.TemporaryDirectory() as root:
        prepare.prepare(
            f"{root}/data",
            config.data.source,
            vocab_size=config.data.vocab_size,
            max_documents=_DOCUMENTS.value,
            progress=False,
        )
        loop_config.data.dir = f"{root}/data"
        train.train_and_evaluate(loop_config, f"{root}/run")
        loop_rate = read_metrics(f"{root}/run").median("padded_tokens_per_second")
    return {
        "bare_tokens_per_second": bare["tokens_per_second"],
        "loop_tokens_per_second": loop_rate,
        "ratio": loop_rate / bare["tokens_per_second"],
        "device_kind": bare["device_kind"],
    }


def benchmark_checkpoint(config) -> dict[str, float]:
    """How long an asynchronous save blocks the loop (arrays copied off the device) and how long
    it takes to be on disk, for the config's train state; the second of two saves."""
    import tempfile

    from jaxpretrain import checkpoint

    setup = state_lib.setup(config)
    state = state_lib.init_state(setup.model_config, setup.tx, setup.layout, config.train.seed)
    jax.block_until_ready(state)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    with tempfile.TemporaryDirectory() as root:
        checkpointer = checkpoint.Checkpointer(f"{root}/checkpoints", max_to_keep=2)
        for step in (1, 2):
            start = time.perf_counter()
            checkpointer.save(step, state, {"position": step}, {"metrics_records": 0})
            blocked = time.perf_counter() - start
            checkpointer.wait()
            written = time.perf_counter() - start
        checkpointer.close()
    return {
        "state_gib": state_bytes / 2**30,
        "blocked_s": blocked,
        "written_s": written,
        "device_kind": jax.devices()[0].device_kind,
    }


def benchmark_matmul(size: int, repeats: int = 10) -> dict[str, float]:
    """The bf16 matmul FLOP/s this device reaches on [size, size] x [size, size]: the practical
    ceiling MFU is read against beside the spec sheet's peak."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / repeats
    peak = flops.peak_flops_per_device(jax.devices()[0])
    achieved = 2 * size**3 / seconds
    return {
        "size": size,
        "tflops": achieved / 1e12,
        "spec_tflops": None if peak is None else peak / 1e12,
        "device_kind": jax.devices()[0].device_kind,
    }


def prose_documents(count: int) -> list:
    """The stdlib corpus's docstring and help-topic documents (natural language), cycled."""
    from jaxpretrain.curate import sources

    report = sources.SourceReport(source="stdlib")
    prose = [d for d in sources.iter_documents("stdlib", report) if d.kind == "text"]
    return [prose[i % len(prose)] for i in range(count)]


def _rate(fn, docs) -> tuple[float, float]:
    """(documents/s, MB/s) of calling `fn` on `docs`, timed once after one warm-up call."""
    fn(docs[:10])
    start = time.perf_counter()
    fn(docs)
    seconds = time.perf_counter() - start
    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    return len(docs) / seconds, megabytes / seconds


def benchmark_data(num_documents: int) -> list[tuple[str, float, float]]:
    import datasketch

    from jaxpretrain.curate import clean, dedup, filters

    docs = prose_documents(num_documents)
    rows = [
        (
            "clean (ftfy, NFC, whitespace, specials)",
            *_rate(lambda ds: [clean.clean_document(d) for d in ds], docs),
        )
    ]
    for name in (
        "length",
        "blocklist",
        "c4",
        "fineweb",
        "gopher_quality",
        "gopher_repetition",
        "language",
    ):
        chain = [filters.get(name)]
        rows.append(
            (
                f"filter {name}",
                *_rate(lambda ds, chain=chain: [filters.apply_filters(d, chain) for d in ds], docs),
            )
        )
    for hash_name in ("fast", "sha1"):
        hasher = dedup.MinHasher(dedup.MinHashConfig(shingle_hash=hash_name))
        rows.append(
            (
                f"MinHash signatures, ours ({hash_name} shingle hash)",
                *_rate(lambda ds, hasher=hasher: hasher.signatures([d.text for d in ds]), docs),
            )
        )

    def datasketch_signatures(ds):
        for d in ds:
            minhash = datasketch.MinHash(num_perm=112, seed=1)
            minhash.update_batch([s.encode() for s in dedup.shingles(d.text)])

    rows.append(
        ("MinHash signatures, datasketch update_batch", *_rate(datasketch_signatures, docs))
    )
    rows.extend(benchmark_pipeline(_CORPUS_MB.value))
    return rows


def benchmark_pipeline(corpus_megabytes: float) -> list[tuple[str, float, float]]:
    """The whole local pipeline (read, clean, the default chain, exact + MinHash dedup, split,
    tokenizer, tokenize, shards, report) on a generated web-like corpus
    (`curate/synthetic.py`, ~`corpus_megabytes` MB in 8 JSONL files), with 1 and 2 workers.

    Rows: (label, documents/s, MB/s of wall time); the label carries GB per core-hour (wall time
    x workers) and GB per CPU-hour (user + system time of every process of the run).
    """
    import resource
    import tempfile

    from jaxpretrain.curate import config as data_config
    from jaxpretrain.curate import prepare, synthetic

    num_documents = max(100, int(corpus_megabytes * 1e6 / 1_500))  # ~1.5 KB per document
    rows = []
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_web_corpus(f"{root}/web", num_documents, num_files=8)
        megabytes = sum(p.stat().st_size for p in pathlib.Path(root, "web").iterdir()) / 1e6
        for workers in (1, 2):
            cfg = data_config.default_data_config()
            cfg.sources = [data_config.source_config(name="web", type="jsonl", path=f"{root}/web")]
            cfg.executor.workers = workers
            cfg.tokenizer.vocab_size = 1024  # the generated corpus has ~250 distinct words

            def cpu_seconds() -> float:
                own = resource.getrusage(resource.RUSAGE_SELF)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

            cpu_before, start = cpu_seconds(), time.perf_counter()
            prepare.prepare_from_config(cfg, f"{root}/out{workers}", progress=False)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_before
            per_core_hour = megabytes / 1e3 / (seconds * workers / 3600)
            per_cpu_hour = megabytes / 1e3 / (cpu / 3600)
            label = (
                f"whole pipeline, web-like {megabytes:.0f} MB, default chain + exact + MinHash, "
                f"{workers} worker(s): {per_core_hour:.2f} GB/core-hour, "
                f"{per_cpu_hour:.2f} GB/CPU-hour"
            )
            rows.append((label, num_documents / seconds, megabytes / seconds))
    return rows


def attention_masks(batch: int, length: int) -> dict:
    """The three kinds of batch attention sees (`attention_impls` picks a kernel call per kind):
    one document per row (no segment ids needed), packed documents of ~length/4 tokens, and the
    same with a bidirectional prefix on each document's first third (prefix LM, UL2)."""
    from jaxpretrain.model.attention_impls import attention_mask

    document = max(1, length // 4)
    positions_L = np.arange(length)
    packed_L = (positions_L // document + 1).astype(np.int32)
    prefix_L = (positions_L % document < document // 3).astype(np.int32)
    none_L = np.zeros(length, np.int32)

    def rows(x_L: np.ndarray) -> jax.Array:
        return jnp.asarray(np.broadcast_to(x_L, (batch, length)))

    return {
        "causal, one document": attention_mask(rows(np.ones(length, np.int32)), rows(none_L)),
        "causal, segment ids": attention_mask(rows(packed_L), rows(none_L)),
        "prefix, segment ids": attention_mask(rows(packed_L), rows(prefix_L)),
    }


def attention_implementations() -> dict:
    """The implementations that run on this machine's platform: name -> attention function."""
    from jaxpretrain.model import attention_impls as impls

    available = {"xla": impls.xla_attention}
    platform_kernel = impls.resolve("auto", impls.current_platform())
    if platform_kernel == "cudnn":
        available["cudnn"] = impls.cudnn_attention
    if platform_kernel == "splash":
        available["splash"] = impls.splash_attention
    return available


def benchmark_attention(lengths: list[int], tokens: int, heads: tuple[int, int, int]) -> list:
    """Forward + backward time of attention alone (q, k, v -> gradients), per implementation,
    length and mask kind, in bfloat16, at `tokens` tokens per call (batch = tokens // length).

    Rows: (implementation, length, batch, mask kind, median ms, TFLOP/s). FLOPs count the full
    L x L score matrix (4 B N L^2 H forward, twice that backward), not halved for causal masks,
    so a kernel that skips masked blocks shows as more TFLOP/s.
    """
    num_heads, num_kv_heads, head_dim = heads
    rows = []
    for name, attention in attention_implementations().items():
        for length in lengths:
            batch = max(1, tokens // length)
            keys = jax.random.split(jax.random.key(0), 3)
            query = jax.random.normal(keys[0], (batch, length, num_heads, head_dim), jnp.bfloat16)
            key, value = (
                jax.random.normal(k, (batch, length, num_kv_heads, head_dim), jnp.bfloat16)
                for k in keys[1:]
            )

            def loss(q, k, v, mask, attention=attention):
                return jnp.sum(attention(q, k, v, mask).astype(jnp.float32))

            step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            flops = 3 * 4 * batch * num_heads * length**2 * head_dim
            for kind, mask in attention_masks(batch, length).items():
                try:
                    seconds = _median_seconds(step, (query, key, value, mask))
                except Exception as error:  # noqa: BLE001
                    # A GPU session gets one prepared run: a call the card refuses (memory, a
                    # cuDNN limit) costs its row, not the rest of the table.
                    rows.append((name, length, batch, kind, str(error).splitlines()[0], None))
                    continue
                rows.append((name, length, batch, kind, seconds * 1e3, flops / seconds / 1e12))
    return rows


def _median_seconds(fn, args) -> float:
    """Median wall time of `fn(*args)` over --steps calls, after compilation and --warmup."""
    jax.block_until_ready(fn(*args))
    for _ in range(_WARMUP.value):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def attention_table(rows: list, heads: tuple[int, int, int]) -> str:
    """The Markdown table of `benchmark_attention` rows, headed by machine, command and date."""
    from jaxpretrain.model import attention_impls as impls

    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})"
    command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
    lines = [
        f"{datetime.date.today()}, {device}, jax {jax.__version__}: `{command}` "
        f"(heads {heads[0]}, kv heads {heads[1]}, head_dim {heads[2]}, bfloat16, "
        f"median of {_STEPS.value} calls)",
        "",
        "| implementation | length | batch | mask | fwd+bwd | TFLOP/s (full L^2) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, length, batch, kind, ms, tflops in rows:
        if tflops is None:  # `ms` holds the error
            lines.append(f"| {name} | {length} | {batch} | {kind} | failed: {ms[:120]} | |")
        else:
            lines.append(f"| {name} | {length} | {batch} | {kind} | {ms:.2f} ms | {tflops:.3g} |")
    lines += [f"\nFell back: {reason}." for reason in impls.fallback_reasons()]
    return "\n".join(lines) + "\n"


PERFORMANCE_DOCS = pathlib.Path(__file__).parent.parent / "docs" / "performance.md"
RUNS_DOCS_HEADING = "## Benchmark runs (`tools/benchmark.py ... --append_to_docs`)"


def run_description() -> str:
    """Date, machine and command of this run, the line above every table it prints."""
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind} ({platform.machine()})"
    command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
    return f"{datetime.date.today()}, {device}: `{command}`"


def figures_table(figures: dict) -> str:
    """A one-row Markdown table of a subcommand's figures (numbers to 4 significant digits)."""

    def text(value) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value)

    return "\n".join(
        [
            "| " + " | ".join(figures) + " |",
            "| " + " | ".join("---" for _ in figures) + " |",
            "| " + " | ".join(text(value) for value in figures.values()) + " |",
        ]
    )


def append_to_docs_section(text: str, heading: str, path: pathlib.Path = PERFORMANCE_DOCS) -> None:
    """Adds `text` at the end of the `heading` section of docs/performance.md."""
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        raise SystemExit(f"docs/performance.md has no '{heading}' section; add it first.")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # the new text follows the section's last line after one blank line
    after = "".join(lines[end:]).lstrip("\n")
    path.write_text("".join(lines[:end]) + "\n" + text + ("\n" + after if after else ""))


ATTENTION_DOCS_HEADING = "## Attention implementations (`tools/benchmark.py attention`)"


def main_attention() -> None:
    """`attention`: heads from --config (default: clm_124m's 12 x 64), the table printed and,
    with --append_to_docs, added to docs/performance.md."""
    model = None if _CONFIG.value is None else _CONFIG.value.model
    heads = (12, 12, 64) if model is None else (model.num_heads, model.num_kv_heads, model.head_dim)
    lengths = [int(length) for length in _LENGTHS.value]
    table = attention_table(benchmark_attention(lengths, _ATTENTION_TOKENS.value, heads), heads)
    print(table)
    if _APPEND_TO_DOCS.value:
        append_to_docs_section(table, ATTENTION_DOCS_HEADING)


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[1] == "data":
        print(f"| date | block ({_DOCUMENTS.value} docs, 1 core) | documents/s | MB/s |")
        print("| --- | --- | --- | --- |")
        for name, docs_per_second, mb_per_second in benchmark_data(_DOCUMENTS.value):
            print(
                f"| {datetime.date.today()} | {name} | {docs_per_second:,.0f} | "
                f"{mb_per_second:.2f} |"
            )
        return
    if len(argv) == 2 and argv[1] in ("loop", "checkpoint"):
        if _CONFIG.value is None:
            raise app.UsageError(f"benchmark.py {argv[1]} needs --config=CONFIG.")
        measure = benchmark_loop if argv[1] == "loop" else benchmark_checkpoint
        result = measure(_CONFIG.value)
        if _JSON.value:
            print(json.dumps(result))
            return
        table = f"{run_description()}\n\n{figures_table(result)}\n"
        print(table)
        if _APPEND_TO_DOCS.value:
            append_to_docs_section(table, RUNS_DOCS_HEADING)
        return
    if len(argv) == 2 and argv[1] == "attention":
        main_attention()
        return
    if len(argv) == 2 and argv[1] == "matmul":
        print(json.dumps(benchmark_matmul(_MATMUL_SIZE.value)))
        return
    if len(argv) != 2 or argv[1] != "train":
        raise app.UsageError(
            "usage: benchmark.py train --config=CONFIG [--json] | loop --config=CONFIG | "
            "checkpoint --config=CONFIG | data [--documents=N] | matmul [--matmul_size=N] | "
            "attention [--config=CONFIG] [--lengths=N,...] [--append_to_docs]"
        )
    if _CONFIG.value is None:
        raise app.UsageError("benchmark.py train needs --config=CONFIG.")
    result = benchmark_train(_CONFIG.value)
    if _JSON.value:
        print(json.dumps(result))
        return
    mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    table = (
        f"{run_description()}\n\n"
        "| mesh | params | step | step (median, min-max) | tokens/s | MFU | compile | peak mem |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {result['mesh']} | {result['params_m']:.1f}M | {result['step_ms']:.0f} ms | "
        f"{result['step_ms_median']:.0f} ms ({result['step_ms_min']:.0f}-"
        f"{result['step_ms_max']:.0f}) | {result['tokens_per_second']:,.0f} | {mfu} | "
        f"{result['compile_s']:.1f} s | {result['peak_memory_gib']:.2f} GiB |\n"
    )
    print(table)
    if _APPEND_TO_DOCS.value:
        append_to_docs_section(table, RUNS_DOCS_HEADING)


if __name__ == "__main__":
    app.run(main)
