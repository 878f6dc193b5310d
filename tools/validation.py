"""One formatter for validation errors (pydantic's, and FastAPI's request errors): a message
naming each field at fault and what is wrong with it, and the fields' dotted paths."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol


class HasErrors(Protocol):
    """pydantic's `ValidationError` and FastAPI's `RequestValidationError`."""

    def errors(self) -> Sequence[Any]: ...


def field_path(location: Iterable[Any], skip: Collection[str] = ()) -> str:
    """A location ('items', 0, 'name') as a dotted path ('items.0.name'), without `skip` parts."""
    return ".".join(str(part) for part in location if part not in skip)


def validation_problems(error: HasErrors | Sequence[Mapping[str, Any]], *, whole: str = "arguments",
                        skip: Collection[str] = (), label: str = "{}",
                        limit: int | None = None) -> tuple[str, list[str]]:
    """('a.b: msg; c: msg', ['a.b', 'c']): one problem per error (of an exception, or a list of
    pydantic-style error dicts), joined by '; ', and the paths of the fields at fault. `whole`
    names an error of the whole input (no field); `skip`: location parts left out (FastAPI's
    'body'); `label` formats a path, e.g. "field '{}'"; `limit`: problems shown, then "(and N
    more)"."""
    problems: list[str] = []
    fields: list[str] = []
    for item in error if isinstance(error, Sequence) else error.errors():
        path = field_path(item["loc"], skip)
        problems.append(f"{label.format(path) if path else whole}: {item['msg']}")
        if path:
            fields.append(path)
    more = len(problems) - limit if limit is not None else 0
    shown = "; ".join(problems[:limit] if limit is not None else problems)
    return shown + (f" (and {more} more)" if more > 0 else ""), fields
