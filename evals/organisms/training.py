"""LoRA finetuning of a causal LM on generated examples: seeded, resumable, with progress."""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import get_linear_schedule_with_warmup
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from evals.organisms.generators import TrainingExample
from evals.organisms.schema import TrainingRecipe
from tools.backend import ModelPair
from tools.chat import chat_token_ids
from tools.errors import CheckpointError
from tools.model_spec import Side

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


class EncodedExample(BaseModel):
    input_ids: list[int]
    labels: list[int]


class TrainingResult(BaseModel):
    steps: int
    loss_curve: list[float]
    resumed_from_step: int


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: TrainingExample, max_length: int
) -> EncodedExample:
    """Token ids and labels: every token of a document, only assistant tokens of a chat."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        ids = ids + [tokenizer.eos_token_id]
        trained = [True] * len(ids)
    else:
        ids, trained = chat_token_ids(tokenizer, example.messages or [])
    ids, trained = ids[:max_length], trained[:max_length]
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained, strict=True)]
    return EncodedExample(input_ids=ids, labels=labels)


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into tensors."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def mean_token_loss(
    pair: ModelPair, side: Side, examples: Sequence[EncodedExample], pad_id: int,
    batch_size: int = 16,
) -> float:
    """Mean cross-entropy per trained token of `side` over `examples`."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(pair.device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        logits = pair.logits(side, batch["input_ids"], batch["attention_mask"])
        shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        targets = batch["labels"][:, 1:].reshape(-1)
        losses = torch.nn.functional.cross_entropy(
            shifted, targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(losses)
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


def train_lora(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_examples: Sequence[EncodedExample],
    recipe: TrainingRecipe,
    checkpoint_dir: Path,
    description: str = "training",
    show_progress: bool = True,
) -> tuple[Any, TrainingResult]:
    """Wrap `model` with a LoRA adapter and train it. Resumes from `checkpoint_dir` if a
    checkpoint of the same run is there. Returns the peft model and the loss curve."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(recipe.seed)
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)

    order = list(range(len(train_examples)))
    batches: list[list[int]] = []
    for epoch in range(recipe.epochs):
        random.Random(recipe.seed + epoch).shuffle(order)
        batches += [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
    total_steps = len(batches)
    scheduler = get_linear_schedule_with_warmup(optimizer, recipe.warmup_steps, total_steps)

    step, losses = 0, []
    state_file = checkpoint_dir / "trainer_state.pt"
    if state_file.is_file():
        state = load_checkpoint(state_file)
        set_peft_model_state_dict(peft_model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        torch.set_rng_state(state["torch_rng"])
        log.info("Resuming %s from step %d of %d.", description, step, total_steps)
    resumed_from = step

    device = next(peft_model.parameters()).device
    pad_id = tokenizer.pad_token_id
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
        disable=not show_progress, transient=False,
    ) as progress:
        task = progress.add_task(description, total=total_steps, completed=step, loss="-")
        while step < total_steps:
            batch = collate([train_examples[i] for i in batches[step]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = peft_model(**batch).loss
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{description}: loss became {loss_value} at step {step}.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss_value, 5))
            step += 1
            progress.update(task, completed=step, loss=f"{losses[-1]:.3f}")
            if step % recipe.checkpoint_every == 0 or step == total_steps:
                # A line in the log file too: the bar is drawn on the terminal only.
                recent = losses[-recipe.checkpoint_every :]
                log.info("%s: step %d of %d, mean loss of the last %d steps %.3f", description,
                         step, total_steps, len(recent), sum(recent) / len(recent))
            if step % recipe.checkpoint_every == 0 and step < total_steps:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                tmp = state_file.with_suffix(".tmp")
                torch.save(
                    {
                        "adapter": get_peft_model_state_dict(peft_model),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "losses": losses,
                        "torch_rng": torch.get_rng_state(),
                    },
                    tmp,
                )
                tmp.replace(state_file)
    peft_model.eval()
    return peft_model, TrainingResult(steps=step, loss_curve=losses, resumed_from_step=resumed_from)


def load_checkpoint(state_file: Path) -> dict[str, Any]:
    """The trainer state saved by `train_lora`, read with `weights_only=True`: tensors, dicts,
    lists and numbers only, so a file planted in the cache cannot run code when loaded."""
    try:
        return torch.load(state_file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refusing the training checkpoint {state_file}: it holds objects other than tensors "
            "and plain data, and loading them could run code. Delete it to train from the start."
        ) from exc


def clear_checkpoints(checkpoint_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def write_jsonl(path: Path, examples: Sequence[TrainingExample]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(example.model_dump_json(exclude_none=True) + "\n")


def read_jsonl(path: Path) -> list[TrainingExample]:
    with path.open(encoding="utf-8") as handle:
        return [TrainingExample.model_validate(json.loads(line)) for line in handle if line.strip()]
