"""The worker service: holds one model pair and its ADL artifacts and answers tool requests.

The same object serves HTTP requests (`tools.worker.http`) and in-process callers. Every
forward pass goes through one `ModelQueue`; readouts and cached samples need no model.
Dataset (corpus) names are anonymized to `dataset_1`, `dataset_2`, ... in every answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import psutil
import torch

from prompts import load_prompt_set
from tools.adl.coherence import CoherenceGrader
from tools.adl.differences import difference_notes, null_difference_note
from tools.adl.pipeline import (
    AdlArtifact,
    AdlReadouts,
    ScaleChooser,
    choose_primary_layer,
    run_adl,
    run_steering,
    steering_direction,
)
from tools.adl.steering import PositionSteering, generate_steered
from tools.corpus import describe_corpus
from tools.errors import ToolInputError
from tools.models import ModelPair, ModelPairSpec, load_model_pair
from tools.worker.queue import ModelQueue
from tools.worker.schema import (
    ChatReply,
    ChatRequest,
    ChatResponse,
    DatasetOverview,
    GenerateSteeredRequest,
    Overview,
    PositionTokens,
    ReadoutRequest,
    ReadoutResponse,
    SteeredPrompt,
    SteeredSamplesRequest,
    SteeredSamplesResponse,
    WorkerConfig,
    WorkerInfo,
)

log = logging.getLogger(__name__)
OVERVIEW_TOKENS = 10  # the reference's overview `top_k_tokens`
LAST_BLOCK_PATCHSCOPE_NOTE = (
    "At the model's last block Patchscope is the plain logit lens of the same difference (the "
    "patched residual passes only through the final norm and the unembedding): its agreement "
    "with the logit lens there is not independent evidence.")


def patchscope_note(layer: int, n_layers: int) -> str | None:
    """The note that Patchscope at `layer` repeats the logit lens (the model's last block)."""
    return LAST_BLOCK_PATCHSCOPE_NOTE if layer == n_layers - 1 else None


def anonymized_dataset_name(index: int) -> str:
    """The name the agent sees for the index-th diffing dataset."""
    return f"dataset_{index + 1}"


def _control_readouts(
    control_spec: ModelPairSpec, config: WorkerConfig, show_progress: bool
) -> dict[str, AdlReadouts]:
    """Readouts of the layer-rule control pair on every dataset (the pair is released when this
    returns: only its readouts are kept)."""
    control = load_model_pair(control_spec, config.load, config.backend)
    return {
        anonymized_dataset_name(index): run_adl(
            control, config.adl.model_copy(update={"corpus": corpus}), show_progress=show_progress
        ).readouts
        for index, corpus in enumerate(config.datasets)
    }


class AdlService:
    """One model pair, its ADL artifacts per dataset, and the model queue."""

    def __init__(
        self,
        config: WorkerConfig,
        pair: ModelPair,
        artifacts: dict[str, AdlArtifact],
        steering: dict[str, list[PositionSteering]],
        steering_prompts: list[str],
    ) -> None:
        self.config = config
        self.pair = pair
        self.artifacts = artifacts
        self.steering = steering
        self.steering_prompts = steering_prompts
        self.limits = config.limits
        self.queue = ModelQueue(
            self._run_chat, max_pending=config.limits.max_pending_jobs,
            max_batch_prompts=config.limits.max_batch_prompts,
        )
        self.stopping = False

    @classmethod
    def start(cls, config: WorkerConfig, *, show_progress: bool = True,
              scale_chooser: ScaleChooser | None = None,
              coherence_grader: CoherenceGrader | None = None) -> AdlService:
        """Load the pair once, then compute (or load cached) ADL and steering per dataset. The
        judges (LLM ones built from `config.judge` by the caller) default to the offline rules."""
        controls = (_control_readouts(config.layer_control, config, show_progress)
                    if config.layer_control else {})
        pair = load_model_pair(config.pair, config.load, config.backend)
        prompts = config.steering_prompts or load_prompt_set(config.steering.final_prompt_set)
        artifacts: dict[str, AdlArtifact] = {}
        steering: dict[str, list[PositionSteering]] = {}
        for index, corpus in enumerate(config.datasets):
            name = anonymized_dataset_name(index)
            log.info("ADL on %s (%s)", name, describe_corpus(corpus))
            artifact = run_adl(pair, config.adl.model_copy(update={"corpus": corpus}),
                               show_progress=show_progress, scale_chooser=scale_chooser)
            if name in controls:
                choice = choose_primary_layer(artifact.readouts, controls[name])
                log.info("primary layer of %s by the contrast rule: %d (scores %s)", name,
                         choice.layer, choice.scores)
                artifact.readouts = artifact.readouts.model_copy(update={"primary_layer": choice.layer})
            artifacts[name] = artifact
            for note in difference_notes(name, artifact.difference):
                log.warning("%s", note)
            steering[name] = run_steering(pair, artifact, config.steering, prompts=prompts,
                                          positions=config.steering_positions,
                                          show_progress=show_progress,
                                          coherence_grader=coherence_grader)
        return cls(config, pair, artifacts, steering, prompts)

    # -- model work -------------------------------------------------------------------------

    def _run_chat(self, side: str, prompts: list[str], max_new_tokens: int, temperature: float,
                  seed: int) -> list[str]:
        return self.pair.generate(
            side, prompts, max_new_tokens=max_new_tokens,  # type: ignore[arg-type]
            temperature=temperature, seed=seed, batch_size=max(1, len(prompts)),
        )

    def _check_prompts(self, prompts: Sequence[str], field: str = "prompts") -> None:
        if len(prompts) > self.limits.max_prompts:
            raise ToolInputError(
                f"Too many prompts: {len(prompts)} given, at most {self.limits.max_prompts} per "
                "request.", [field])
        for i, prompt in enumerate(prompts):
            if len(prompt) > self.limits.max_prompt_chars:
                raise ToolInputError(
                    f"Prompt {i} has {len(prompt)} characters; at most "
                    f"{self.limits.max_prompt_chars} are allowed.", [f"{field}.{i}"])

    def _check_new_tokens(self, max_new_tokens: int) -> None:
        if max_new_tokens > self.limits.max_new_tokens:
            raise ToolInputError(
                f"max_new_tokens={max_new_tokens} is above the limit of "
                f"{self.limits.max_new_tokens}.", ["max_new_tokens"])

    def chat(self, request: ChatRequest) -> ChatResponse:
        """Replies of each requested side to each prompt (through the model queue)."""
        self._check_prompts(request.prompts)
        self._check_new_tokens(request.max_new_tokens)
        by_side = {
            side: self.queue.chat(side, list(request.prompts), request.max_new_tokens,
                                  request.temperature, request.seed)
            for side in dict.fromkeys(request.sides)
        }
        replies = [
            ChatReply(prompt=prompt, replies={side: by_side[side][i] for side in by_side})
            for i, prompt in enumerate(request.prompts)
        ]
        texts = [text for replies_of_side in by_side.values() for text in replies_of_side]
        # the fast tokenizer is not thread-safe: count on the model thread
        generated = self.queue.call(lambda: sum(len(self.pair.tokenizer(t)["input_ids"]) for t in texts))
        return ChatResponse(replies=replies, generated_tokens=generated)

    # -- readouts and steering ----------------------------------------------------------------

    def _artifact(self, dataset: str) -> AdlArtifact:
        if dataset not in self.artifacts:
            raise ToolInputError(
                f"Unknown dataset {dataset!r}; available: {', '.join(self.artifacts)}.", ["dataset"])
        return self.artifacts[dataset]

    def _layer(self, artifact: AdlArtifact, layer: int | None) -> int:
        layers = [entry.layer for entry in artifact.readouts.layers]
        if layer is None:
            return artifact.readouts.primary_layer
        if layer not in layers:
            raise ToolInputError(f"Layer {layer} was not computed; available layers: {layers}.",
                                 ["layer"])
        return layer

    def _positions(self, artifact: AdlArtifact, positions: list[int] | None, field: str = "positions") -> list[int]:
        n_positions = artifact.difference.n_positions
        if positions is None:
            return list(range(n_positions))
        if not positions:
            raise ToolInputError("The list of positions is empty.", [field])
        # Duplicates are answered once: a request cannot multiply the reply by repeating itself,
        # so a reply holds at most the computed positions.
        positions = list(dict.fromkeys(positions))
        for position in positions:
            if not 0 <= position < n_positions:
                raise ToolInputError(
                    f"Unknown position {position}: positions 0..{n_positions - 1} were computed.",
                    [field])
        return positions

    def readouts(self, request: ReadoutRequest) -> ReadoutResponse:
        """Cached top tokens per position; k is clamped to what is cached, with a note."""
        artifact = self._artifact(request.dataset)
        layer = artifact.readouts.layer(self._layer(artifact, request.layer))
        positions = self._positions(artifact, request.positions)
        cached_k = (artifact.settings.patchscope_k if request.method == "patchscope"
                    else artifact.settings.readout_k)
        k = min(request.k, cached_k)
        notes = [f"k={request.k} is more than the {cached_k} tokens cached for {request.method}; "
                 f"showing {k}." if request.k > cached_k else None]
        if request.method == "patchscope":
            notes.append(patchscope_note(layer.layer, artifact.readouts.n_layers_model))
        null_here = artifact.difference.null_positions(layer.layer)
        null = [p for p in positions if p in null_here]
        notes.append(null_difference_note(layer.layer, null))
        note = " ".join(n for n in notes if n) or None
        rows: list[PositionTokens] = []
        for position in positions:
            readout = layer.positions[position]
            if request.method == "patchscope":
                scale = readout.patchscope_scale
                rows.append(PositionTokens(position=position, patchscope_scale=scale,
                                           tokens=readout.patchscope[str(scale)][:k]))
            else:
                tokens = getattr(readout, request.method)
                rows.append(PositionTokens(position=position, tokens=tokens[:k]))
        return ReadoutResponse(dataset=request.dataset, layer=layer.layer, method=request.method,
                               k=k, positions=rows, note=note, null_positions=null)

    def _position_steering(self, dataset: str, position: int) -> PositionSteering:
        artifact = self._artifact(dataset)
        self._positions(artifact, [position], "position")
        for entry in self.steering[dataset]:
            if entry.position == position:
                return entry
        steered = [entry.position for entry in self.steering[dataset]]
        raise ToolInputError(f"Position {position} has no steering results; steered positions: "
                             f"{steered}.", ["position"])

    def steered_samples(self, request: SteeredSamplesRequest) -> SteeredSamplesResponse:
        """Cached steered and unsteered samples at the searched strengths."""
        entry = self._position_steering(request.dataset, request.position)
        cached = {sample.prompt: sample for sample in entry.samples}
        prompts = list(dict.fromkeys(request.prompts)) if request.prompts is not None else list(cached)
        if not prompts:
            raise ToolInputError("The list of prompts is empty.", ["prompts"])
        if request.prompts is not None:  # every cached prompt (the default) is a cheap read
            self._check_prompts(prompts)
        unknown = [p for p in prompts if p not in cached]
        if unknown:
            raise ToolInputError(
                f"No cached samples for {unknown[0]!r}; cached prompts: {list(cached)}. Use "
                "generate_steered for new prompts.", ["prompts"])
        n_cached = min(len(s.steered) for s in entry.samples)
        n = min(request.n, n_cached)
        notes = [(f"n={request.n} is more than the {n_cached} cached samples per prompt; showing "
                 f"{n}.")] if request.n > n_cached else []
        if entry.control is not None and not entry.control.calibrated:
            notes.append("The strength search was uninformative: even unsteered samples failed its "
                         f"coherence check (pass rates by temperature {entry.control.pass_rates}).")
        null = self._artifact(request.dataset).difference.is_null(entry.layer, entry.position)
        if null:
            notes.append(null_difference_note(entry.layer, [entry.position]) or "")
        note = " ".join(notes) or None
        samples = [SteeredPrompt(prompt=p, strength=cached[p].strength, steered=cached[p].steered[:n],
                                 unsteered=cached[p].unsteered[:n]) for p in prompts]
        return SteeredSamplesResponse(dataset=request.dataset, layer=entry.layer,
                                      position=request.position, samples=samples, note=note,
                                      null_difference=null)

    def generate_steered(self, request: GenerateSteeredRequest) -> SteeredSamplesResponse:
        """Live steered samples (no unsteered ones: those come from ask_models, which charges
        for them) at the position's searched strength."""
        entry = self._position_steering(request.dataset, request.position)
        if self._artifact(request.dataset).difference.is_null(entry.layer, entry.position):
            raise ToolInputError(  # it would charge interactions for unsteered samples
                f"{null_difference_note(entry.layer, [entry.position])} Ask the finetuned model "
                "itself with ask_models instead.", ["position"])
        self._check_prompts(request.prompts)
        if request.n > self.limits.max_samples:
            raise ToolInputError(f"n={request.n} is above the limit of {self.limits.max_samples} "
                                 "samples per prompt.", ["n"])
        # At the temperature the search used (its unsteered control may have lowered it).
        settings = entry.control.applied(self.config.steering) if entry.control else self.config.steering
        max_new_tokens = request.max_new_tokens or settings.final_max_new_tokens
        self._check_new_tokens(max_new_tokens)
        artifact = self._artifact(request.dataset)
        direction = steering_direction(artifact.difference, entry.layer, request.position)
        rows = [p for p in request.prompts for _ in range(request.n)]

        def run() -> list[str]:
            return generate_steered(
                self.pair, rows, direction[None].expand(len(rows), -1).contiguous(),
                [entry.strength] * len(rows), entry.layer, max_new_tokens=max_new_tokens,
                temperature=settings.final_temperature, seed=request.seed, side=settings.side,
                max_batch_size=settings.max_batch_size,
            )

        steered = self.queue.call(run)
        n = request.n
        samples = [SteeredPrompt(prompt=p, strength=entry.strength, steered=steered[i * n : (i + 1) * n])
                   for i, p in enumerate(request.prompts)]
        return SteeredSamplesResponse(dataset=request.dataset, layer=entry.layer,
                                      position=request.position, samples=samples)

    # -- overview and state ---------------------------------------------------------------------

    def overview(self) -> Overview:
        """Per dataset and position: top tokens of both readouts at the primary layer and one
        steered vs unsteered sample per steering prompt."""
        datasets = []
        for name, artifact in self.artifacts.items():
            lens = self.readouts(ReadoutRequest(dataset=name, k=OVERVIEW_TOKENS))
            scope = self.readouts(ReadoutRequest(dataset=name, method="patchscope", k=OVERVIEW_TOKENS))
            steering = [
                self.steered_samples(SteeredSamplesRequest(dataset=name, position=entry.position))
                for entry in self.steering[name]
            ]
            datasets.append(DatasetOverview(
                dataset=name, layer=lens.layer, n_layers=artifact.readouts.n_layers_model,
                positions=lens.positions, patchscope=scope.positions, steering=steering,
                patchscope_note=patchscope_note(lens.layer, artifact.readouts.n_layers_model),
                null_positions=lens.null_positions,
                difference_note=null_difference_note(lens.layer, lens.null_positions),
            ))
        first = next(iter(self.artifacts.values()))
        return Overview(
            datasets=datasets, available_layers=[entry.layer for entry in first.readouts.layers],
            n_positions=first.difference.n_positions, steering_prompts=self.steering_prompts,
        )

    def notes(self) -> list[str]:
        """What an operator should know: the pair's load notes, then where a difference is zero."""
        return [*self.pair.notes, *(note for name, artifact in self.artifacts.items()
                                    for note in difference_notes(name, artifact.difference))]

    def info(self) -> WorkerInfo:
        first = next(iter(self.artifacts.values()))
        accelerator = (sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
                       if self.pair.device.type == "cuda" else None)  # every GPU a device_map uses
        return WorkerInfo(
            label=self.config.label, base_model=self.config.pair.base,
            finetuned_model=self.config.pair.finetuned, device=str(self.pair.device),
            dtype=self.config.load.dtype, backend=self.pair.backend_name,
            tokenizer=self.pair.tokenizer_side, notes=self.notes(),
            datasets={anonymized_dataset_name(i): describe_corpus(c)
                      for i, c in enumerate(self.config.datasets)},
            layers=first.difference.layers, n_positions=first.difference.n_positions,
            queue_length=len(self.queue), jobs_done=self.queue.jobs_done,
            rss_bytes=psutil.Process(os.getpid()).memory_info().rss,
            accelerator_bytes=accelerator, limits=self.limits,
            status="stopping" if self.stopping else "ready",
        )

    def close(self, drain_timeout: float = 30.0) -> int:
        """Finish queued work (up to `drain_timeout` s), reject the rest; returns rejections."""
        self.stopping = True
        return self.queue.close(drain_timeout)
