"""The one formatter of validation errors (tools/validation.py)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from tools.validation import validation_problems


class _Inner(BaseModel):
    k: int = Field(ge=1)


class _Outer(BaseModel):
    name: str
    inner: _Inner


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate(data)
    return caught.value


def test_each_problem_names_its_field_and_the_fields_are_listed() -> None:
    message, fields = validation_problems(_error({"inner": {"k": 0}}))
    assert message == ("name: Field required; "
                       "inner.k: Input should be greater than or equal to 1")
    assert fields == ["name", "inner.k"]


def test_an_error_of_the_whole_input_is_named_by_whole() -> None:
    message, fields = validation_problems(_error("not a mapping"), whole="eval config")
    assert message.startswith("eval config: Input should be a valid dictionary") and fields == []


def test_skip_label_and_limit() -> None:
    errors = [{"loc": ("body", "a"), "msg": "bad"}, {"loc": ("body",), "msg": "worse"},
              {"loc": ("body", "b", 0), "msg": "odd"}]
    assert validation_problems(errors, whole="body", skip=("body",)) == (
        "a: bad; body: worse; b.0: odd", ["a", "b.0"])
    assert validation_problems(errors, label="field '{}'", limit=1)[0] == (
        "field 'body.a': bad (and 2 more)")
