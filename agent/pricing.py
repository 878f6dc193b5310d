"""The model table in `agent/prices.yaml`: dollar prices and context windows per model.

A model may have a price, a context window, or both; one without a price costs "unknown"
(None), never zero."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.providers.base import Usage

PRICES_FILE = Path(__file__).with_name("prices.yaml")


class Price(BaseModel):
    """Dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


class ModelEntry(BaseModel):
    """One model of the table: its price (dollars per million tokens; input and output together
    or neither) and its context window in tokens, each optional."""

    model_config = ConfigDict(extra="forbid")

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    context_window: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _whole_price(self) -> ModelEntry:
        if (self.input is None) != (self.output is None):
            raise ValueError("a price needs both input and output")
        if self.input is None and (self.cached_input is not None or self.cache_write is not None):
            raise ValueError("cached_input and cache_write need input and output prices")
        return self

    @property
    def price(self) -> Price | None:
        if self.input is None or self.output is None:
            return None
        return Price(input=self.input, output=self.output, cached_input=self.cached_input,
                     cache_write=self.cache_write)


@functools.cache
def model_table(path: str | None = None) -> dict[str, dict[str, ModelEntry]]:
    """Provider kind -> model -> entry, from `path`, else $ADL_PRICES, else the packaged file."""
    source = Path(path or os.environ.get("ADL_PRICES") or PRICES_FILE)
    data = yaml.safe_load(source.read_text()) or {}
    return {kind: {model: ModelEntry.model_validate(entry) for model, entry in models.items()}
            for kind, models in data.items()}


def _entry(kind: str, model: str) -> ModelEntry | None:
    return model_table().get(kind, {}).get(model)


def known_context_window(kind: str, model: str) -> int | None:
    """The model table's context window of `model` (tokens), or None when it has none."""
    entry = _entry(kind, model)
    return entry.context_window if entry is not None else None


def cost_usd(kind: str, model: str, usage: Usage) -> float | None:
    """The cost of one call, or None when the model has no price (unknown, not zero).
    `usage.input_tokens` counts every input token, cached ones included."""
    entry = _entry(kind, model)
    price = entry.price if entry is not None else None
    if price is None:
        return None
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write if price.cache_write is not None else price.input
    uncached = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
    dollars = (uncached * price.input + usage.cached_input_tokens * cached_rate
               + usage.cache_write_tokens * write_rate + usage.output_tokens * price.output)
    return dollars / 1e6
