"""Dollar cost of provider calls from the price table in `agent/prices.yaml`."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml
from pydantic import BaseModel

from agent.providers.base import Usage

PRICES_FILE = Path(__file__).with_name("prices.yaml")


class Price(BaseModel):
    """Dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@functools.cache
def price_table(path: str | None = None) -> dict[str, dict[str, Price]]:
    source = Path(path or os.environ.get("ADL_PRICES") or PRICES_FILE)
    data = yaml.safe_load(source.read_text()) or {}
    return {kind: {model: Price.model_validate(p) for model, p in models.items()}
            for kind, models in data.items()}


def cost_usd(kind: str, model: str, usage: Usage) -> float | None:
    """The cost of one call, or None when the model has no price (unknown, not zero).
    `usage.input_tokens` counts every input token, cached ones included."""
    price = price_table().get(kind, {}).get(model)
    if price is None:
        return None
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write if price.cache_write is not None else price.input
    uncached = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
    dollars = (uncached * price.input + usage.cached_input_tokens * cached_rate
               + usage.cache_write_tokens * write_rate + usage.output_tokens * price.output)
    return dollars / 1e6
