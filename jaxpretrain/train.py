"""The training loop and the run-level entry points (train, evaluate a checkpoint).

The train state and its shardings come from `state.py`, the jitted steps from `steps.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxpretrain import checkpoint, flops, monitor, objectives, paths, recovery, sample, steps
from jaxpretrain import config as config_lib
from jaxpretrain import mesh as mesh_lib
from jaxpretrain import state as state_lib
from jaxpretrain.data import device as data_device
from jaxpretrain.data import manifest as manifest_lib
from jaxpretrain.data import pipeline, streams
from jaxpretrain.state import TrainState
from jaxpretrain.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The pieces a run is made of, resolved from a config and its prepared data."""

    config: ml_collections.ConfigDict
    setup: state_lib.Setup
    manifest: manifest_lib.Manifest
    tokenizer: Tokenizer
    objective: objectives.Objective
    examples_fn: Callable[..., list[dict[str, np.ndarray]]]
    # Packed validation batches by (source, num_streams), reused at every eval.
    _eval_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # The setup's parts, by the names the loop uses.
    mesh = property(lambda self: self.setup.mesh)
    model_config = property(lambda self: self.setup.model_config)
    tx = property(lambda self: self.setup.tx)
    schedule = property(lambda self: self.setup.schedule)
    layout = property(lambda self: self.setup.layout)
    batch_sharding = property(lambda self: self.setup.batch_sharding)

    @property
    def batch_size_per_process(self) -> int:
        """Rows this process loads per batch: its data slot's share of the global batch."""
        return self.config.train.batch_size // self.setup.data_slot[1]

    def eval_sources(self) -> list[str]:
        """The sources validated one by one: every source with validation documents, when the
        data is a mixture of several (one source is simply the whole split)."""
        sources = list(self.manifest.source_weights("validation"))
        return sources if len(sources) > 1 else []

    def eval_batches(
        self, source: str | None = None, num_streams: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """This process's validation batches of `source` (None: the whole split), packed once
        and kept for the run when `eval.steps` bounds them (-1, the whole split, is re-read).

        `num_streams`: the run's data stream count (default one per data-loading process),
        which fixes the rows of every step whatever the process count.
        """
        key = (source, num_streams)
        if key in self._eval_cache:
            return self._eval_cache[key]
        slot, slots = self.setup.data_slot
        batches = pipeline.make_eval_batches(
            self.manifest,
            examples_fn=self.examples_fn,
            seq_len=self.config.train.seq_len,
            batch_size_per_process=self.batch_size_per_process,
            num_batches=self.config.eval.steps,
            source=source,
            process_index=slot,
            process_count=slots,
            num_streams=num_streams,
        )
        if self.config.eval.steps == -1 and jax.process_count() > 1:
            # Whole-split streams end at different lengths: every process must run the same
            # number of eval steps (each is a collective), so the shorter ones pad.
            counts = multihost_utils.process_allgather(np.int32(len(batches)))
            padding = pipeline.padding_batch(
                self.batch_size_per_process,
                self.config.train.seq_len,
                self.manifest.special_ids.pad,
            )
            batches = batches + [padding] * (int(np.max(counts)) - len(batches))
        if self.config.eval.steps > 0:
            self._eval_cache[key] = batches
        return batches

    def evaluate(
        self,
        eval_step: Callable[..., dict[str, jax.Array]],
        params: Any,
        token_bytes_V: jax.Array,
        num_streams: int | None = None,
    ) -> dict[str, float]:
        """Validation metrics of `params`: overall, and per source for a mixture (each source
        sampled on its own, `eval.steps` batches each; see `steps.mixture_eval_metrics`)."""
        bits_per_byte = self.objective.predicts_text

        def sums(source: str | None) -> dict[str, float]:
            return steps.evaluation_sums(
                eval_step,
                params,
                self.eval_batches(source, num_streams),
                token_bytes_V,
                self.batch_sharding,
                self.config.train.batch_size,
            )

        sources = self.eval_sources()
        if not sources:
            return steps.eval_metrics(sums(None), bits_per_byte)
        return steps.mixture_eval_metrics(
            {source: sums(source) for source in sources},
            self.manifest.token_shares("train"),
            bits_per_byte,
        )

    def token_bytes(self) -> jax.Array:
        """UTF-8 bytes per token id, padded to the model's vocabulary, for bits per byte."""
        lengths_V = self.tokenizer.token_byte_lengths().astype(np.float32)
        lengths_V = np.pad(lengths_V, (0, self.model_config.vocab_size - len(lengths_V)))
        return jax.device_put(lengths_V, mesh_lib.replicated(self.mesh))

    def train_iterator(self, num_streams: int) -> grain.DatasetIterator:
        """This process's training batches, from `num_streams` data streams (see pipeline)."""
        return pipeline.make_train_iterator(
            self.manifest,
            examples_fn=self.examples_fn,
            seq_len=self.config.train.seq_len,
            batch_size_per_process=self.batch_size_per_process,
            seed=self.config.train.seed,
            process_index=self.setup.data_slot[0],
            process_count=self.setup.data_slot[1],
            num_streams=num_streams,
            shuffle_window=self.config.data.shuffle_window,
        )

    def checkpointer(self, workdir: str, read_only: bool = False) -> checkpoint.Checkpointer:
        """The run's checkpoints; `read_only` for readers (eval, tools) beside a live run."""
        return checkpoint.Checkpointer(
            os.fspath(paths.resolve(workdir) / "checkpoints"),
            max_to_keep=self.config.checkpoint.max_to_keep,
            use_async=self.config.checkpoint.use_async,
            read_only=read_only,
        )


def build_experiment(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
) -> Experiment:
    """Validates `config` (in `state.setup`) and resolves it against the prepared data it names.

    `devices` (default: all) restricts the mesh, e.g. to compare 1 device with 8 in one process.
    """
    manifest = manifest_lib.read_manifest(config_lib.data_dir(config, workdir))
    tokenizer = Tokenizer.load(manifest.tokenizer_path)
    objective = objectives.get(config.objective.name)
    return Experiment(
        config=config,
        setup=state_lib.setup(config, tokenizer_vocab=manifest.vocab_size, devices=devices),
        manifest=manifest,
        tokenizer=tokenizer,
        objective=objective,
        examples_fn=functools.partial(
            objective.make_examples,
            seq_len=config.train.seq_len,
            special_ids=manifest.special_ids,
            settings=ml_collections.FrozenConfigDict(config.objective),
            vocab_size=manifest.vocab_size,
        ),
    )


@dataclasses.dataclass
class TrainResult:
    """What a finished `train_and_evaluate` leaves behind, for callers and tests."""

    experiment: Experiment
    state: TrainState
    history: list[dict[str, float | None]]  # the records this call wrote to metrics.jsonl
    preempted: bool = False  # stopped early by SIGTERM after saving; rerun to continue


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
) -> TrainResult:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Expects prepared data at `config_lib.data_dir(config, workdir)` (main.py prepares it).
    """
    return run_training(build_experiment(config, workdir, devices), workdir)


def run_training(
    exp: Experiment, workdir: str, train_iterator: grain.DatasetIterator | None = None
) -> TrainResult:
    """The training loop of `train_and_evaluate`, for an experiment already built.

    `train_iterator` replaces the prepared data's train batches with another checkpointable
    source of this process's batches (e.g. `data.seqio_tasks.make_seqio_train_iterator`, so a
    registered seqio Task feeds the trainer); validation still reads the prepared data. Such an
    iterator resumes only on the process count that saved it.
    """
    config = exp.config
    train_step = steps.make_configured_train_step(exp.setup, exp.objective, config.train)
    eval_step = steps.make_eval_step(
        exp.layout,
        exp.objective,
        exp.batch_sharding,
        micro_steps=exp.config.train.grad_accum_steps,
    )
    token_bytes_V = exp.token_bytes()
    own_pipeline = train_iterator is None
    checkpointer = exp.checkpointer(workdir)
    check_run = functools.partial(recovery.check_same_model, config, str(checkpointer.directory))
    try:
        restored = checkpointer.restore(exp.layout.abstract_state, check_run=check_run)
        # Another iterator's saved states are its own: the stream count then only shapes eval.
        num_streams = (
            _num_streams(exp, restored) if own_pipeline else config.data.num_streams or None
        )
        train_iter = train_iterator or exp.train_iterator(num_streams)
        if restored is None:
            state = state_lib.init_state(exp.model_config, exp.tx, exp.layout, config.train.seed)
        else:
            state = restored.state
            recovery.set_data_position(train_iter, restored.data_states, own_pipeline)
    except BaseException:
        checkpointer.close()
        raise
    start_step = restored.step if restored else 0
    is_primary = jax.process_index() == 0
    if is_primary:  # one writer: every host shares the workdir; after the model check passed
        config_lib.write_config_json(config, workdir)
        # The workdir carries its tokenizer: loading or exporting the model needs no data folder.
        tokenizer_copy = paths.resolve(workdir) / "tokenizer.model"
        if not tokenizer_copy.exists():
            paths.write_bytes_atomic(tokenizer_copy, exp.tokenizer.serialized_model)

    def run_eval(params) -> dict[str, float]:
        return exp.evaluate(eval_step, params, token_bytes_V, num_streams)

    # Records past the checkpoint (all of them without one) are about to be logged again.
    config_json = json.loads(json.dumps(config.to_dict(), default=str))
    try:
        writer = monitor.create_writer(
            workdir,
            is_primary,
            keep_records=restored.run["metrics_records"] if restored else 0,
            monitor_config=config.monitor,
            run_config=config_json,
        )
    except BaseException:
        checkpointer.close()
        raise

    def save(step: int) -> None:
        run_info = {"config": config_json, "metrics_records": writer.records}
        writer.flush()  # the records the checkpoint counts are on storage before it is
        checkpointer.save(step, state, train_iter.get_state(), run_info)

    progress = monitor.Progress(config.train.steps)
    anomaly_guard = recovery.AnomalyGuard(config.train.anomaly, writer)
    flops_per_token = flops.train_flops_per_token(exp.model_config, config.train.seq_len)
    peak = flops.peak_flops_per_device(jax.devices()[0], config.train.peak_tflops_per_device)
    tokens_per_step = config.train.batch_size * config.train.seq_len
    history: list[dict[str, float | None]] = []

    def write(step: int, scalars: dict[str, float | None]) -> None:
        writer.write_scalars(step, scalars)
        history.append({"step": step, **scalars})

    if config.checkpoint.save_on_preemption:
        checkpointer.watch_preemption()
    pending: list[dict[str, jax.Array]] = []
    # Host-side token counts of the interval's batches: positions, non-pad, carrying loss.
    interval_tokens = np.zeros(3, np.int64)
    clock = monitor.TrainingClock()
    step, clock_step, preempted = start_step, start_step, False
    try:
        if restored is not None:
            logging.info("resumed from checkpoint at step %d", start_step)
            writer.write_event(
                start_step, "resume", {"processes": jax.process_count(), "devices": exp.mesh.size}
            )
        if start_step == 0 and config.eval.every > 0:
            write(0, run_eval(state["params"]))
        while step < config.train.steps:
            step += 1
            host_batch = next(train_iter)
            interval_tokens += (
                host_batch["segment_ids"].size,
                np.count_nonzero(host_batch["segment_ids"]),
                np.count_nonzero(host_batch["loss_weights"]),
            )
            batch = data_device.to_global_arrays(
                host_batch, exp.batch_sharding, config.train.batch_size
            )
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            clock.count_step()
            if step == clock_step + 1:
                # Exclude compilation from throughput: restart the clock after the first step.
                jax.block_until_ready(metrics)
                clock.restart()

            is_last = step == config.train.steps
            preempted = checkpointer.preempted(step)  # every step, on every process
            save_due = step % config.checkpoint.every == 0 or is_last or preempted
            scalars: dict[str, float | None] = {}
            # A save also closes the logging interval, so no metric or anomaly of the steps it
            # covers is lost to a stop after it.
            if step % config.train.log_every == 0 or save_due:
                fetched = jax.device_get(pending)  # the only host sync of the interval
                elapsed, timed_steps = clock.seconds(), clock.steps
                first_step = step - len(fetched) + 1
                bad_step = anomaly_guard.review(first_step, fetched)
                normal = [m for m in fetched if not int(m["anomaly"])] or fetched
                # The timed steps are the interval's last ones (the compiling step is not).
                # With none timed (the interval held only that step), rates are unknown: null.
                timed = fetched[len(fetched) - timed_steps :] if timed_steps else []
                tokens_per_second = padded_tokens_per_second = model_flops_utilization = None
                if timed:
                    tokens_per_second = sum(int(m["tokens"]) for m in timed) / elapsed
                    padded_tokens_per_second = timed_steps * tokens_per_step / elapsed
                    model_flops_utilization = flops.mfu(
                        tokens_per_second, flops_per_token, peak, exp.mesh.size
                    )
                scalars = {
                    "loss": float(np.mean([m["loss"] for m in normal])),
                    "learning_rate": float(fetched[-1]["learning_rate"]),
                    "grad_norm": float(np.mean([m["grad_norm"] for m in normal])),
                    # Non-pad tokens per second of training (eval and saves excluded); MFU
                    # counts the same tokens. The padded figure counts every row position.
                    "tokens_per_second": tokens_per_second,
                    "padded_tokens_per_second": padded_tokens_per_second,
                    "mfu": model_flops_utilization,
                    # Share of row positions holding a token (packing) / carrying loss.
                    "packing_efficiency": float(interval_tokens[1] / interval_tokens[0]),
                    "loss_token_fraction": float(interval_tokens[2] / interval_tokens[0]),
                    "skipped_updates": float(sum(int(m["update_skipped"]) for m in fetched)),
                }
                if config.train.z_loss > 0:
                    scalars["z_loss"] = float(np.mean([m["z_loss"] for m in normal]))
                if is_primary:
                    steps_per_second = timed_steps / elapsed if timed_steps else None
                    progress.report(step, scalars["loss"], tokens_per_second, steps_per_second)
                pending = []
                interval_tokens[:] = 0
                clock.restart()
                if bad_step is not None:
                    write(step, scalars)
                    anomaly_guard.count_rollback(bad_step)
                    skip_batches = config.train.anomaly.rollback_skip_batches
                    target = recovery.rollback(
                        checkpointer,
                        exp.layout.abstract_state,
                        train_iter,
                        bad_step=bad_step,
                        skip_batches=skip_batches,
                        own_pipeline=own_pipeline,
                    )
                    if target is None:
                        writer.write_event(step, "rollback_unavailable", {"bad_step": bad_step})
                    else:
                        skipped = bad_step - target.step + skip_batches
                        details = {"to_step": target.step, "skipped_batches": skipped}
                        writer.write_event(step, "rollback", details)
                        step, state, clock_step = target.step, target.state, target.step
                        continue
            if config.eval.every > 0 and (step % config.eval.every == 0 or is_last):
                jax.block_until_ready(state)  # the steps dispatched so far count as training
                with clock.paused():
                    scalars.update(run_eval(state["params"]))
                logging.info("step %d: %s", step, {k: v for k, v in scalars.items() if "eval" in k})
            if scalars:
                write(step, scalars)
            if preempted:
                writer.write_event(step, "preempted", {})
            if save_due:
                jax.block_until_ready(state)
                with clock.paused():
                    save(step)
            if preempted:
                logging.warning("saved checkpoint %d after a preemption signal; exiting", step)
                break
    finally:
        try:
            writer.close()
        finally:
            checkpointer.close()  # waits for the last save: a preemption's must be on storage
    return TrainResult(exp, state, history, preempted=preempted)


def _num_streams(exp: Experiment, restored: checkpoint.Restored | None) -> int:
    """The run's data stream count: the saved one when resuming (it fixes the data order)."""
    configured = exp.config.data.num_streams
    if restored is None:
        return configured or exp.setup.data_slot[1]
    saved = streams.merge_stream_states(restored.data_states)["num_streams"]
    slots = exp.setup.data_slot[1]
    if saved % slots:
        raise checkpoint.CheckpointError(
            f"the run's data order is {saved} data streams, which {slots} data-loading "
            f"processes cannot share; resume on a process count dividing {saved}, or use a new "
            "--workdir (set data.num_streams at the start of a run that will change size)."
        )
    if configured not in (0, saved):
        logging.warning(
            "data.num_streams=%d ignored: the run was started with %d streams, which decide its "
            "data order until it ends.",
            configured,
            saved,
        )
    return saved


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Validation metrics of the latest checkpoint in `workdir`."""
    exp = build_experiment(config, workdir)
    checkpointer = exp.checkpointer(workdir, read_only=True)
    try:
        restored = checkpointer.restore(
            checkpoint.params_only(exp.layout.abstract_state),
            check_run=functools.partial(
                recovery.check_same_model, config, str(checkpointer.directory)
            ),
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(
            f"no checkpoint in {checkpointer.directory}; train first (--mode=train)."
        )
    step, state = restored.step, restored.state
    saved_streams = streams.merge_stream_states(restored.data_states)["num_streams"]
    # The run's rows when this process count can run its streams; else this setup's own.
    num_streams = saved_streams if saved_streams % exp.setup.data_slot[1] == 0 else None
    eval_step = steps.make_eval_step(
        exp.layout,
        exp.objective,
        exp.batch_sharding,
        micro_steps=exp.config.train.grad_accum_steps,
    )
    metrics = exp.evaluate(eval_step, state["params"], exp.token_bytes(), num_streams)
    return {"step": step, **metrics}


def sample_text(result: TrainResult, sample_cfg: ml_collections.ConfigDict) -> str:
    """A continuation of `sample.prompt` from the trained parameters."""
    exp = result.experiment
    # One prompt is no batch to pipeline: sample with the same parameters, layers run in order.
    unpipelined = dataclasses.replace(
        exp.model_config, pipeline_stages=1, pipeline_repeats=1, pipeline_microbatches=1
    )
    return sample.generate(
        state_lib.abstract_model(unpipelined)[0],
        result.state["params"],
        exp.tokenizer,
        sample_cfg.prompt,
        length=sample_cfg.length,
        seq_len=exp.config.train.seq_len,
        temperature=sample_cfg.temperature,
        rng=result.state["rng"],
    )
