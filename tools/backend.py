"""The model backend: the one object that owns a loaded base/finetuned pair and runs it.

Everything the ADL engine, the worker and the organism builder do with the models goes through
`ModelPair`'s operations:

- `residuals` / `stream_residuals`: the residual stream after given blocks (`resid_post`), of
  one batch or of many in one operation;
- `patched_logits`: a forward pass with the residual at one position replaced;
- `logits`: a plain forward pass;
- `generate`: chat replies, with an optional additive steering vector;
- `unembed`: the final norm and the unembedding of residual-stream vectors.

Each takes the side ("base" or "finetuned"). How a side is obtained (a LoRA adapter switched off
or on over one copy of the base weights, or two separate models), the in-place LoRA merge that
speeds up bulk CPU passes, and the hooks are private to the backend: hooks live for one call.

Two implementations share the loading and the side switch and differ only in how they reach the
residual stream:

- `BridgeModelPair` (the default): one transformer_lens `TransformerBridge` per distinct set of
  weights, booted once (the boot wraps the HF model's modules in place), used for every forward
  pass and every generation (`blocks.{L}.hook_resid_post`).
- `HFHooksModelPair`: plain PyTorch forward hooks on the HF decoder's blocks (`layers` or `h` of
  `model.get_decoder()`: Llama, Qwen, Gemma, Mistral, Phi, OLMo, GPT-NeoX, GPT-2, Falcon, ...). A
  drop-in: tests/test_backend.py runs the same invariants against both, and
  tests/test_architectures.py both on tiny models of twenty-two architectures. It keeps the
  model's own attention kernel (SDPA), where the bridge runs eager attention: the two agree to
  float rounding, not bit for bit.

The bridge checks, when it is made for an adapter pair, that its forward pass runs every layer
of the adapter (LoRA or another peft type) that HF's own forward pass runs. Some architectures'
bridges compute fused projections (Phi-3's `qkv_proj` and `gate_up_proj`, GLM-4's
`gate_up_proj`, GPT-NeoX's `query_key_value`, GPT-2's `c_attn`) from split copies of the
weights, which skips the adapter there: the "finetuned" side would silently be partly the base
model. It then raises `BackendUnsupportedError`, as when transformer_lens cannot wrap an
architecture at all, and `tools.models.load_model_pair` loads the pair again on the hf-hooks
backend (logged as a warning; `backend_name` and the ADL cache keys name the backend that ran).

**Single-threaded contract.** A backend is not thread-safe: the side switch and the LoRA merge
change shared modules in place. Every public operation holds `_exclusive`, which raises
`ConcurrentModelUseError` when another thread is inside an operation (the worker runs all model
work on one queue thread, `tools.worker.queue.ModelQueue`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from tools.chat import Conversation, decode_replies, encode_prompts, stop_token_ids
from tools.errors import AdlInputError, BackendUnsupportedError, ConcurrentModelUseError
from tools.model_spec import (
    BLOCK_INDEX,
    BLOCK_LIST_NAMES,
    SIDES,
    BackendName,
    LoadOptions,
    ModelPairSpec,
    Side,
)

ResidualEdit = Callable[[Tensor], Tensor | None]
"""A function of the residual stream `[batch, pos, d_model]` after one block: it may read it
(return None) or return the tensor to continue with."""


@dataclass(frozen=True)
class Steering:
    """An additive steering vector per generated row, added to `resid_post` of `layer` at every
    position (prompt and generated tokens)."""

    layer: int
    additive: Float[Tensor, "batch d_model"]


@dataclass
class LoadedModels:
    """What `tools.models.load_model_pair` loaded: the tokenizer, the HF model of each side (the
    same object for an adapter pair or a control), the peft wrapper of an adapter pair, and
    where each side came from, the side the tokenizer comes from
    (`tools.models.load_pair_tokenizer`), and what the load found that a researcher should know
    (a tokenizer choice, an adapter that records another base, a backend fallback)."""

    spec: ModelPairSpec
    tokenizer: PreTrainedTokenizerBase
    models: dict[Side, Any]
    peft: Any | None
    locations: dict[Side, str]
    options: LoadOptions
    tokenizer_side: Side = "base"
    notes: list[str] = field(default_factory=list)


class ModelPair(ABC):
    """A base model and its finetune behind one backend (see the module docstring)."""

    backend_name: BackendName

    def __init__(self, loaded: LoadedModels) -> None:
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.tokenizer_side = loaded.tokenizer_side
        self.notes = list(loaded.notes)
        self.options = loaded.options
        self._models = loaded.models
        self._peft = loaded.peft
        self._locations = loaded.locations
        self._lock = threading.Lock()
        self._owner: int | None = None

    # -- description -------------------------------------------------------------------------

    @property
    def base_location(self) -> str:
        """Where the base model was loaded from: a local folder or a hub id."""
        return self._locations["base"]

    @property
    def shares_base_weights(self) -> bool:
        """True when one set of weights serves both sides (adapter or no finetune)."""
        return self._models["base"] is self._models["finetuned"]

    @property
    def config(self) -> Any:
        """The base model's HF config of its language model (a multimodal model's text config;
        read-only use)."""
        return self._models["base"].config.get_text_config()

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self._models["base"].parameters()).device

    def parameter_bytes(self) -> int:
        """Bytes of all distinct parameter tensors the pair holds (shared weights counted once)."""
        seen: set[int] = set()
        total = 0
        for model in self._models.values():
            for tensor in model.parameters():
                if tensor.data_ptr() not in seen:
                    seen.add(tensor.data_ptr())
                    total += tensor.numel() * tensor.element_size()
        return total

    # -- operations --------------------------------------------------------------------------

    @torch.inference_mode()
    def residuals(
        self, side: Side, token_ids: Int[Tensor, "batch seq"], layers: Sequence[int]
    ) -> dict[int, Float[Tensor, "batch seq d_model"]]:
        """`resid_post` of each of `layers` for one batch (the pass stops after the last one)."""
        with self._exclusive():
            return self._residuals(side, token_ids, layers)

    def stream_residuals(
        self,
        side: Side,
        batches: Iterable[Int[Tensor, "batch seq"]],
        layers: Sequence[int],
        consume: Callable[[Tensor, dict[int, Float[Tensor, "batch seq d_model"]]], None],
    ) -> None:
        """`residuals` of many batches in one operation, each handed to `consume(batch,
        residuals)` (which must not call the pair). On a CPU the finetuned side of an adapter
        pair runs with the adapter merged into blocks 0..max(layers) meanwhile (restored bit for
        bit afterwards): peft's unmerged path costs about 30% more there."""
        with (self._exclusive(), self._merged_adapter(side, upto_layer=max(layers)),
              torch.inference_mode()):
            for batch in batches:
                consume(batch, self._residuals(side, batch, layers))

    @torch.inference_mode()
    def logits(
        self,
        side: Side,
        token_ids: Int[Tensor, "batch seq"],
        attention_mask: Int[Tensor, "batch seq"] | None = None,
    ) -> Float[Tensor, "batch seq vocab"]:
        """A plain forward pass."""
        with self._exclusive():
            return self._forward(side, token_ids.to(self.device), self._on_device(attention_mask),
                                 {}, stop_at_layer=None)

    @torch.inference_mode()
    def patched_logits(
        self,
        side: Side,
        token_ids: Int[Tensor, "batch seq"],
        layer: int | Sequence[int],
        position: int,
        replacement: Float[Tensor, "batch d_model"],
    ) -> Float[Tensor, "batch vocab"]:
        """Logits at `position` with that position's `resid_post` of a layer replaced by
        `replacement[row]` (Patchscope): of `layer`, or of `layer[row]` when it is a sequence
        (rows patched at different layers share one pass). When every row is the same prompt
        (Patchscope's one prompt under many replacements), the tokens before `position` run once
        and their KV cache serves every row: a patch cannot change earlier positions, so only
        the tokens from `position` on are run per row."""
        rows = token_ids.shape[0]
        row_layers = [layer] * rows if isinstance(layer, int) else list(layer)
        if len(row_layers) != rows or replacement.shape[0] != rows:
            raise AdlInputError("patched_logits needs one layer (or one for all) and one replacement per row.")
        for each in set(row_layers):
            self._check_layer(each)
        replacement = replacement.to(self.device)
        token_ids = token_ids.to(self.device)
        shared_prefix = 0 < position < token_ids.shape[1] and bool((token_ids == token_ids[:1]).all())

        def edits(at: int) -> dict[int, ResidualEdit]:
            """Per layer, replace its rows' residual at index `at` of the tokens run."""
            def replace(selected: Tensor) -> ResidualEdit:
                def edit(resid: Tensor) -> Tensor:
                    if resid.shape[1] > at:
                        resid[selected.to(resid.device), at] = replacement[selected].to(
                            device=resid.device, dtype=resid.dtype)
                    return resid
                return edit
            return {each: replace(torch.tensor([i for i, x in enumerate(row_layers) if x == each]))
                    for each in sorted(set(row_layers))}

        with self._exclusive():
            cache = self._prefix_cache(side, token_ids[:1, :position], rows) if shared_prefix else None
            if cache is None:
                return self._forward(side, token_ids, None, edits(position), stop_at_layer=None)[:, position]
            with self._edited(side, edits(0)) as model:
                return model(input_ids=token_ids[:, position:], past_key_values=cache,
                             use_cache=True).logits[:, 0]

    def _prefix_cache(self, side: Side, prefix: Tensor, rows: int) -> Any | None:
        """The KV cache of `prefix` (one row) repeated for `rows` rows; None for a model whose
        cache cannot be repeated (then the caller runs the whole sequence)."""
        with self._edited(side, {}) as model:
            cache = model(input_ids=prefix, use_cache=True).past_key_values
        try:
            cache.batch_repeat_interleave(rows)
        except (AttributeError, NotImplementedError, TypeError):
            return None
        return cache

    @torch.inference_mode()
    def generate(
        self,
        side: Side,
        prompts: Sequence[str | Conversation],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        steering: Steering | None = None,
    ) -> list[str]:
        """One chat reply per prompt (greedy when temperature is 0), in left-padded batches of
        `batch_size`; the batch starting at row `start` samples with seed `seed + start`. With
        `steering`, row i gets `steering.additive[i]` added (see `Steering`)."""
        if steering is not None:
            self._check_layer(steering.layer)
            if len(steering.additive) != len(prompts):
                raise AdlInputError("Steering needs one vector per prompt.")
        replies: list[str] = []
        with self._exclusive(), self._merged_adapter(side, upto_layer=None):
            for start in range(0, len(prompts), batch_size):
                rows = list(prompts[start : start + batch_size])
                encoded = encode_prompts(self.tokenizer, rows).to(self.device)
                edits: dict[int, ResidualEdit] = {}
                if steering is not None:
                    additive = steering.additive[start : start + batch_size].to(self.device)

                    def add(resid: Tensor, additive: Tensor = additive) -> Tensor:
                        if resid.shape[0] != additive.shape[0]:
                            raise RuntimeError("Steering batch size does not match the generation batch.")
                        # In the model's dtype, on the block's device (a device_map spreads them).
                        vector = additive[:, None, :].to(device=resid.device, dtype=resid.dtype)
                        return resid + vector

                    edits[steering.layer] = add
                sampling: dict[str, Any] = {"do_sample": temperature > 0}
                if temperature > 0:
                    sampling.update(temperature=temperature, top_p=1.0, top_k=0)
                    torch.manual_seed(seed + start)
                output = self._generate(
                    side, encoded["input_ids"], encoded["attention_mask"], edits,
                    max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=stop_token_ids(self.tokenizer), **sampling,
                )
                replies += decode_replies(self.tokenizer, output[:, encoded["input_ids"].shape[1] :])
        return replies

    @torch.inference_mode()
    def unembed(
        self, vectors: Float[Tensor, "n d_model"], side: Side = "finetuned"
    ) -> Float[Tensor, "n vocab"]:
        """Final norm + unembedding (logits) of residual-stream vectors."""
        with self._exclusive():
            return self._unembed(side, vectors).float()

    # -- what an implementation provides ------------------------------------------------------

    @abstractmethod
    def _forward(
        self,
        side: Side,
        token_ids: Tensor,
        attention_mask: Tensor | None,
        edits: Mapping[int, ResidualEdit],
        stop_at_layer: int | None,
    ) -> Tensor:
        """Run `side` with `edits` applied to `resid_post` of their layers, hooks scoped to this
        call. Returns the logits; with `stop_at_layer` (the number of blocks to run) the pass
        ends early and the return value is unspecified."""

    @abstractmethod
    def _edited(self, side: Side, edits: Mapping[int, ResidualEdit]) -> contextlib.AbstractContextManager[Any]:
        """The HF model acting as `side`, with `edits` applied to `resid_post` of their layers
        while the context lasts (hooks scoped to it): for calls that take HF arguments
        (`generate`, a KV cache)."""

    def _generate(self, side: Side, input_ids: Tensor, attention_mask: Tensor,
                  edits: Mapping[int, ResidualEdit], **generation: Any) -> Tensor:
        """HF `generate` of `side` with `edits` applied at every step; prompt + new token ids."""
        with self._edited(side, edits) as model:
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation)

    @abstractmethod
    def _unembed(self, side: Side, vectors: Tensor) -> Tensor:
        """Final norm and unembedding of `vectors`."""

    # -- shared private machinery ---------------------------------------------------------------

    def _residuals(self, side: Side, token_ids: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
        for layer in layers:
            self._check_layer(layer)
        captured: dict[int, Tensor] = {}

        def keep(layer: int) -> ResidualEdit:
            def read(resid: Tensor) -> None:
                captured[layer] = resid.detach().clone()
            return read

        self._forward(side, token_ids.to(self.device), None, {layer: keep(layer) for layer in layers},
                      stop_at_layer=max(layers) + 1)
        return {layer: captured[layer] for layer in layers}

    def _all_on_cpu(self) -> bool:
        """True when every weight of the pair is on the CPU (a device_map may spread them)."""
        return all(tensor.device.type == "cpu" for tensor in self._models["base"].parameters())

    def _on_device(self, tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.to(self.device)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise AdlInputError(f"Layer {layer} is out of range: the model has {self.n_layers} layers.")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The single-threaded contract (module docstring): one operation at a time."""
        if not self._lock.acquire(blocking=False):
            if self._owner == threading.get_ident():
                raise ConcurrentModelUseError(
                    "The model pair was called from inside one of its own operations (a "
                    "stream_residuals consumer must not use the pair).")
            raise ConcurrentModelUseError(
                "The model pair is already running an operation in another thread; a backend is "
                "single-threaded (run model work on one thread, as the worker's queue does).")
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()

    @contextlib.contextmanager
    def _side(self, side: Side) -> Iterator[Any]:
        """The HF model acting as `side` inside the context (an adapter pair's base side is the
        same model with its adapter switched off)."""
        if side not in SIDES:
            raise AdlInputError(f"side must be one of {SIDES}, got {side!r}")
        if side == "base" and self._peft is not None:
            with self._peft.disable_adapter():
                yield self._models["base"]
        else:
            yield self._models[side]

    @contextlib.contextmanager
    def _merged_adapter(self, side: Side, upto_layer: int | None) -> Iterator[None]:
        """On a CPU, the finetuned side of an adapter pair with its LoRA weights merged into
        blocks 0..`upto_layer` (all when None); the original weights are restored bit for bit
        afterwards (a copy is kept meanwhile). Elsewhere (any weight on an accelerator, or
        offloaded) this does nothing."""
        if side != "finetuned" or self._peft is None or not self._all_on_cpu():
            yield
            return
        from peft.tuners.lora import LoraLayer

        merged: list[tuple[Any, Any, dict[str, torch.Tensor]]] = []
        try:
            for name, module in self._peft.named_modules():
                if not isinstance(module, LoraLayer) or module.merged:
                    continue
                match = BLOCK_INDEX.search(name)
                if upto_layer is not None and match and int(match.group(1)) > upto_layer:
                    continue
                # The base layer's own parameters: a weight (and bias), or the fused expert
                # tensors that an adapter of parameters (peft's target_parameters) changes.
                base = module.get_base_layer()
                originals = {n: p.detach().clone() for n, p in base.named_parameters(recurse=False)}
                merged.append((module, base, originals))
                module.merge()
            yield
        finally:
            # Last merged first: nested wrappers of one parameter each restore what they found.
            for module, base, originals in reversed(merged):
                module.unmerge()
                for name, parameter in base.named_parameters(recurse=False):
                    parameter.data.copy_(originals[name])


BOOT_ERROR_CHARS = 300  # of transformer_lens' boot error, in the fallback's warning


class BridgeModelPair(ModelPair):
    """The backend on transformer_lens `TransformerBridge`s: one per distinct HF model, booted when
    the pair is made and then used for every forward pass and generation. The boot wraps the HF
    model's modules in place and switches it to eager attention."""

    backend_name: BackendName = "bridge"

    def __init__(self, loaded: LoadedModels) -> None:
        super().__init__(loaded)
        self._bridges: dict[int, Any] = {}
        # The adapter's layers, named before the boot renames modules, and those HF's own
        # forward pass runs (a layer outside the language model, on a vision tower, runs in
        # neither).
        adapter_layers = self._adapter_layers()
        expected = self._layers_run(adapter_layers, lambda ids: self._models["finetuned"](input_ids=ids))
        # Booted now, before any operation seeds the RNG or merges an adapter: some
        # architectures' boots create layers (consuming random numbers) or copy weights.
        for side in SIDES:
            with self._bridge(side):
                pass
        if expected:
            ran = self._layers_run(adapter_layers,
                                   lambda ids: self._forward("finetuned", ids, None, {}, stop_at_layer=None))
            self._check_adapter_runs(expected - ran)

    def _adapter_layers(self) -> dict[str, Any]:
        """The adapter's layers by their module names: peft's tuner layers (LoRA, DoRA, IA3,
        LoHa, LoKr, ...) and its wrappers of fully trained modules (`modules_to_save`); none
        without an adapter."""
        if self._peft is None:
            return {}
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        return {name.removeprefix("base_model.model."): module
                for name, module in self._peft.named_modules()
                if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)}

    def _layers_run(self, layers: Mapping[str, Any], forward: Callable[[Tensor], Any]) -> set[str]:
        """The names of `layers` that `forward` runs on a few tokens (one hook per layer)."""
        if not layers:
            return set()
        ran: set[str] = set()
        handles = [module.register_forward_hook(lambda *_, name=name: ran.add(name))
                   for name, module in layers.items()]
        try:
            probe = self.tokenizer("The finetune", return_tensors="pt").input_ids
            with torch.inference_mode():
                forward(probe.to(self.device))
        finally:
            for handle in handles:
                handle.remove()
        return ran

    def _check_adapter_runs(self, skipped_layers: set[str]) -> None:
        """Raise BackendUnsupportedError for adapter layers that HF's forward pass runs and the
        bridge's skips (module docstring)."""
        skipped = sorted({re.sub(r"\.\d+\.", ".N.", name) for name in skipped_layers})
        if skipped:
            raise BackendUnsupportedError(
                f"transformer_lens's bridge of {type(self._models['base']).__name__} does not run the "
                f"adapter's layers on {', '.join(skipped[:4])}"
                f"{f' and {len(skipped) - 4} more' if len(skipped) > 4 else ''} (it computes those "
                "projections from its own copies of the weights), so its finetuned side would be "
                "partly the base model.")

    @contextlib.contextmanager
    def _bridge(self, side: Side) -> Iterator[Any]:
        with self._side(side) as model:
            key = id(model)
            if key not in self._bridges:
                from transformer_lens.model_bridge import TransformerBridge

                from tools.models import torch_dtype

                location = self._locations[side]
                try:
                    self._bridges[key] = TransformerBridge.boot_transformers(
                        location if Path(location).is_dir() else self._locations["base"],
                        hf_model=model,
                        tokenizer=self.tokenizer,
                        device=self.options.device,
                        dtype=torch_dtype(self.options),
                    )
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, ValueError, KeyError, AttributeError, TypeError,
                        NotImplementedError) as exc:
                    reason = str(exc).rstrip(".")
                    if len(reason) > BOOT_ERROR_CHARS:  # it may list every architecture it knows
                        reason = reason[:BOOT_ERROR_CHARS] + " [...]"
                    raise BackendUnsupportedError(
                        f"transformer_lens could not wrap {type(model).__name__}: "
                        f"{type(exc).__name__}: {reason}.") from exc
            yield self._bridges[key]

    @staticmethod
    def _hooks(edits: Mapping[int, ResidualEdit]) -> list[tuple[str, Callable[..., Tensor]]]:
        def hook(edit: ResidualEdit) -> Callable[..., Tensor]:
            def run(resid: Tensor, hook: Any) -> Tensor:
                result = edit(resid)
                return resid if result is None else result
            return run

        return [(f"blocks.{layer}.hook_resid_post", hook(edit)) for layer, edit in edits.items()]

    def _forward(self, side: Side, token_ids: Tensor, attention_mask: Tensor | None,
                 edits: Mapping[int, ResidualEdit], stop_at_layer: int | None) -> Tensor:
        extra = {} if attention_mask is None else {"attention_mask": attention_mask}
        with self._bridge(side) as bridge:
            return bridge.run_with_hooks(
                token_ids, fwd_hooks=self._hooks(edits), stop_at_layer=stop_at_layer,
                return_type=None if stop_at_layer is not None else "logits", **extra,
            )

    @contextlib.contextmanager
    def _edited(self, side: Side, edits: Mapping[int, ResidualEdit]) -> Iterator[Any]:
        with self._bridge(side) as bridge, bridge.hooks(fwd_hooks=self._hooks(edits)):
            # The bridge's model, with its modules wrapped by the boot: the hooks above fire at
            # every call and every generation step. (TransformerBridge.hf_generate would reset
            # pad_token_id to eos.)
            yield bridge.original_model

    def _unembed(self, side: Side, vectors: Tensor) -> Tensor:
        with self._bridge(side) as bridge:
            head = bridge.original_model.get_output_embeddings()
            vectors = vectors.to(device=head.weight.device, dtype=head.weight.dtype)
            return bridge.unembed(bridge.ln_final(vectors))


class _StopForward(Exception):
    """Ends a forward pass after the last block whose residual is wanted."""


class HFHooksModelPair(ModelPair):
    """The backend on plain PyTorch forward hooks on the HF decoder's blocks (no
    transformer_lens); `resid_post` of block L is block L's output hidden state."""

    backend_name: BackendName = "hf-hooks"

    # Where HF decoders keep their blocks and their final norm, by architecture family.
    BLOCK_LISTS = BLOCK_LIST_NAMES
    FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f")

    def __init__(self, loaded: LoadedModels) -> None:
        super().__init__(loaded)
        for model in {id(m): m for m in self._models.values()}.values():
            self._layers(model)  # an architecture it cannot run fails now, not at the first call
            self._final_norm(model)

    def _decoder_part(self, model: Any, names: Sequence[str], what: str) -> Any:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        for name in names:
            part = getattr(decoder, name, None)
            if what == "blocks":
                if isinstance(part, torch.nn.ModuleList) and len(part) == self.n_layers:
                    return part
            elif isinstance(part, torch.nn.Module):
                return part
        raise BackendUnsupportedError(
            f"The hf-hooks backend does not know where {type(model).__name__} keeps its {what} "
            f"(none of {', '.join(names)} on {type(decoder).__name__}); use the bridge backend.")

    def _layers(self, model: Any) -> Any:
        return self._decoder_part(model, self.BLOCK_LISTS, "blocks")

    def _final_norm(self, model: Any) -> Any:
        return self._decoder_part(model, self.FINAL_NORMS, "final norm")

    @contextlib.contextmanager
    def _hooked(self, model: Any, edits: Mapping[int, ResidualEdit]) -> Iterator[None]:
        layers = self._layers(model)
        handles = []

        def hook(edit: ResidualEdit) -> Callable[..., Any]:
            def run(module: Any, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                result = edit(hidden)
                if result is None:
                    return None
                return (result, *output[1:]) if isinstance(output, tuple) else result
            return run

        try:
            for layer, edit in edits.items():
                handles.append(layers[layer].register_forward_hook(hook(edit)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _forward(self, side: Side, token_ids: Tensor, attention_mask: Tensor | None,
                 edits: Mapping[int, ResidualEdit], stop_at_layer: int | None) -> Tensor:
        with self._side(side) as model, self._hooked(model, edits):
            if stop_at_layer is None:
                return model(input_ids=token_ids, attention_mask=attention_mask).logits

            def stop(module: Any, args: Any, output: Any) -> None:
                raise _StopForward

            handle = self._layers(model)[stop_at_layer - 1].register_forward_hook(stop)
            try:
                model(input_ids=token_ids, attention_mask=attention_mask)
            except _StopForward:
                pass
            finally:
                handle.remove()
            return torch.empty(0)

    @contextlib.contextmanager
    def _edited(self, side: Side, edits: Mapping[int, ResidualEdit]) -> Iterator[Any]:
        with self._side(side) as model, self._hooked(model, edits):
            yield model

    def _unembed(self, side: Side, vectors: Tensor) -> Tensor:
        with self._side(side) as model:
            head = model.get_output_embeddings()
            vectors = vectors.to(device=head.weight.device, dtype=head.weight.dtype)
            return head(self._final_norm(model)(vectors))


BACKENDS: dict[BackendName, type[ModelPair]] = {"bridge": BridgeModelPair, "hf-hooks": HFHooksModelPair}
