"""``mgpu.cli.plainargs``: the plain command lines ``mgpu`` reads without argparse (tier 1).

The one promise: whenever :func:`mgpu.cli.plainargs.parse` answers, argparse (the parser
``grammar.build_parser`` makes from the same grammar functions) gives the same values, and
exits with no error. Checked on chosen lines and on lines generated from the grammar's own
option strings, values that look like options, ``=`` forms, abbreviations and ``--``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu.cli import grammar, plainargs


def by_argparse(args: list[str]) -> dict[str, Any] | None:
    """``vars(parse_args(args))``, or None when argparse exits (error, help, version)."""
    parser = grammar.build_parser()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return vars(parser.parse_args(args))
    except SystemExit:
        return None


def plain(args: list[str]) -> dict[str, Any] | None:
    ns = grammar.plain_args(args)
    return None if ns is None else vars(ns)


def test_the_constants_are_argparses() -> None:
    assert plainargs.SUPPRESS == argparse.SUPPRESS
    assert plainargs.REMAINDER == argparse.REMAINDER


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "true"],
        ["submit", "python train.py"],
        ["submit", "-G", "2", "-J", "train", "python", "train.py", "--lr", "3e-4"],
        ["--master", "h:1", "submit", "--gres=gpu:2", "--export=ALL,A=b", "--env", "X=1", "x"],
        ["submit", "--master", "h:2", "-v", "--parsable", "--json", "true"],
        ["-v", "--log-level", "debug", "submit", "--max-requeue", "3", "--no-requeue", "x"],
        ["submit", "-t", "1:00", "-D", "/tmp", "x", "-G", "3"],  # options after it: the command's
        ["submit"],  # no command: argparse gives [], and cmd_submit says what is missing
        ["submit", "", "x"],
        ["submit", "-J", "", "x"],
        ["submit", "--env", "A=1", "--env", "B=2", "--export", "NONE", "x"],
        ["queue"],
        ["queue", "-a", "-u", "alice", "-t", "PD,R", "--json"],
        ["--master", "h:3", "queue", "--master", "h:4"],
        ["nodes", "--json"],
        ["config"],
    ],
)
def test_plain_lines_are_read_as_argparse_reads_them(args: list[str]) -> None:
    got = plain(args)
    assert got is not None, "this line should not need argparse"
    assert got == by_argparse(args)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-h"],
        ["--version"],
        ["submit", "-h"],
        ["submit", "--help"],
        ["submit", "--", "x"],  # argparse versions differ on "--": left to argparse
        ["submit", "x", "--", "y"],
        ["submit", "-G2", "x"],  # attached short value
        ["submit", "--gpu", "2", "x"],  # abbreviation
        ["submit", "-G", "-1", "x"],  # a value that looks like an option
        ["submit", "--gpus=", "x"],
        ["submit", "--json=1", "x"],
        ["submit", "x", "--log", "y"],  # ambiguous even inside the command, for argparse
        ["submit", "x", "--ver"],
        ["submit", "--max-requeue", "many", "x"],  # type refuses it
        ["--log-level", "loud", "queue"],  # choices refuse it
        ["-G", "2", "submit", "x"],  # a submit option before the subcommand
        ["queue", "extra"],
        ["show", "7"],  # positionals other than a trailing REMAINDER
        ["wait", "7", "8"],
        ["up", "--port", "0"],  # a mutually exclusive group
        ["node"],
        ["frobnicate"],
    ],
)
def test_other_lines_are_left_to_argparse(args: list[str]) -> None:
    assert plain(args) is None


def _option_strings() -> list[str]:
    """Every option string of every subcommand's grammar (new subcommands included)."""
    strings: set[str] = set()
    for _, _, add_args in grammar.COMMANDS.values():
        g = plainargs.Grammar()
        grammar._global_args(g, plainargs.SUPPRESS)  # type: ignore[arg-type]
        add_args(g)  # type: ignore[arg-type]
        strings |= g.options.keys()
    return sorted(strings)


SUBCOMMANDS = sorted(grammar.COMMANDS)
OPTIONS = _option_strings()
OTHER_WORDS = [
    *OPTIONS,
    *(o + "=2" for o in OPTIONS if o.startswith("--")),
    *sorted({o[:n] for o in OPTIONS if o.startswith("--") for n in (3, 4, 6)}),  # abbreviated
    *("--version", "--", "-", "", "-G2", "-Jx", "-vx", "--lr", "-lr", "--x=--y", "-G=2"),
    *("--gres=gpu:1", "--export=ALL,A=1", "--master=h:9", "--log-level=debug"),
    *("2", "3", "0", "x", "python", "train.py", "debug", "json", "PD,R", "A=1", "gpu:2", "-1"),
    *("1:00", "many", "has space", "-has space"),
]
WORDS = SUBCOMMANDS + OTHER_WORDS


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from(WORDS), max_size=3),
    st.sampled_from(SUBCOMMANDS),
    st.lists(st.sampled_from(WORDS), max_size=8),
)
def test_whenever_it_answers_argparse_agrees(
    before: list[str], name: str, after: list[str]
) -> None:
    args = [*before, name, *after]
    got = plain(args)
    if got is not None:
        assert got == by_argparse(args)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(OTHER_WORDS), max_size=6),
    st.lists(st.text(max_size=6), max_size=4),
)
def test_submit_lines_with_any_words(options: list[str], words: list[str]) -> None:
    args = ["submit", *options, *words]
    got = plain(args)
    if got is not None:
        assert got == by_argparse(args)
