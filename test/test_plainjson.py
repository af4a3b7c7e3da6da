"""``mgpu.utils.plainjson`` is ``json`` for plain data (tier 1): same text out, same values in.

Also ``cli.jobargs.command``'s quoting, the other piece of the standard library that ``mgpu
submit`` spells out for its start-up time, against ``shlex.join``.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu.cli.jobargs import command as _command
from mgpu.utils import plainjson

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["", "\x00", "é", "\u2028", "\ud800", '"\\/', "\U0001f600"])
)
PLAIN = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal, NaN being equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=500, deadline=None)
@given(PLAIN)
def test_dumps_writes_what_json_writes(obj: Any) -> None:
    assert plainjson.dumps(obj) == json.dumps(obj, separators=(",", ":"))


@settings(max_examples=500, deadline=None)
@given(PLAIN, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_reads_what_json_reads(obj: Any, space: str) -> None:
    text = space + json.dumps(obj, indent=1 if space else None) + space
    assert same(plainjson.loads(text), json.loads(text))
    assert same(plainjson.loads(text.encode()), json.loads(text.encode()))


def test_a_submit_body_and_reply() -> None:
    spec = {"command": "python t.py", "gpus": 2, "name": None, "env": {"A": "é"}, "requeue": True}
    body = plainjson.dumps({"jobs": [spec]})
    assert body == json.dumps({"jobs": [spec]}, separators=(",", ":"))
    assert plainjson.loads(b'{"job_ids":[7,8]}') == {"job_ids": [7, 8]}


@pytest.mark.parametrize("text", ["", " ", "{", '{"a":}', "[1,]", "nul", "1 2", '"a" x', "\ufeff1"])
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        plainjson.loads(text)


@pytest.mark.parametrize("obj", [{1: "a"}, {"a": object()}, {1, 2}, b"bytes"])
def test_dumps_refuses_what_is_not_plain(obj: Any) -> None:
    with pytest.raises(TypeError):
        plainjson.dumps(obj)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(), min_size=2, max_size=5))
def test_a_command_of_several_words_is_joined_as_shlex_joins(words: list[str]) -> None:
    if words[0] != "--":
        assert _command(words) == (shlex.join(words), words)


def test_a_command_of_one_word_is_kept_as_it_is() -> None:
    assert _command(["python train.py --lr 3e-4"]) == ("python train.py --lr 3e-4", None)
    assert _command(["--", "a b", "it's"]) == (shlex.join(["a b", "it's"]), ["a b", "it's"])
