"""Plain command lines, read without importing ``argparse`` (start-up time).

``argparse``, with the ``re``, ``enum`` and ``gettext`` it imports, costs about as much as
the interpreter's own start-up, and ``mgpu submit`` has a budget of 2.5 times ``python -c
pass``. So ``cli.main`` first asks :func:`parse` for the common forms of a command line and
gives argparse only the rest. There is one grammar: :class:`Grammar` stands in for an
``ArgumentParser`` and records the same ``add_argument`` calls that build the argparse
parser.

:func:`parse` returns what ``parse_args`` would (as a dict), or ``None`` whenever it is not
sure, and argparse then reads the line and words any error. It reads: exact option strings
(no abbreviations, no ``-G2``); ``--opt VALUE``, ``--opt=VALUE`` and flags; ``store``,
``store_true`` and ``append`` actions with ``type``, ``choices`` and ``default``; global
options before and after the subcommand; and a trailing ``nargs=REMAINDER`` positional,
which takes every word from the first one that is not an option. It declines ``-h``,
``--version``, unknown options, a value that starts with ``-``, ``--`` anywhere, a value
its ``type`` or ``choices`` refuse, a word anywhere that argparse finds ambiguous (it
rejects ``mgpu submit cmd --log`` because ``--log`` could be ``--log-level`` or
``--log-file``, even in the command), and any subcommand whose grammar has something else
(other positionals, mutually exclusive groups). ``test/test_plainargs.py`` checks that
whenever :func:`parse` answers, argparse gives the same.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from typing import Any

    # what an option string stands for: (dest, action, type, choices)
    Option = tuple[str, str, Callable[[str], Any] | None, Any]

SUPPRESS = "==SUPPRESS=="  # argparse.SUPPRESS, spelled out (test_plainargs checks it)
REMAINDER = "..."  # argparse.REMAINDER


class Grammar:
    """An ``argparse.ArgumentParser`` (or argument group) look-alike that records what is
    added to it. ``supported`` turns False on anything :func:`parse` does not read; options
    it does not read but knows (``-h``, ``--version``) make :func:`parse` decline when
    given."""

    def __init__(self, add_help: bool = True) -> None:
        self.options: dict[str, Option] = {}
        self.defaults: dict[str, Any] = {}
        self.remainder: str | None = None  # the dest of a trailing REMAINDER positional
        self.supported = True
        if add_help:  # as ArgumentParser does
            self.add_argument("-h", "--help", action="help")

    def add_argument(self, *flags: str, **kw: Any) -> None:
        action = kw.get("action", "store")
        if not flags[0].startswith("-"):  # a positional
            if kw.get("nargs") == REMAINDER and action == "store" and self.remainder is None:
                self.remainder = kw.get("dest", flags[0])
            else:
                self.supported = False
            return
        if action in ("help", "version"):  # known, but left to argparse
            for flag in flags:
                self.options[flag] = ("", action, None, None)
            return
        if action not in ("store", "store_true", "append") or kw.keys() & {
            "nargs", "const", "required"
        }:
            self.supported = False
            return
        default = kw.get("default", False if action == "store_true" else None)
        if isinstance(default, str) and default != SUPPRESS:
            self.supported = False  # argparse would pass it through `type`
            return
        dest = kw.get("dest") or _dest(flags)
        if default != SUPPRESS:
            self.defaults[dest] = default
        for flag in flags:
            self.options[flag] = (dest, action, kw.get("type"), kw.get("choices"))

    def add_argument_group(self, *args: Any, **kw: Any) -> Grammar:
        return self

    def add_mutually_exclusive_group(self, *args: Any, **kw: Any) -> Grammar:
        self.supported = False
        return self

    def set_defaults(self, **kw: Any) -> None:
        self.defaults.update(kw)


def _dest(flags: tuple[str, ...]) -> str:
    """argparse's dest for an option: its first long string, else its first, without the
    dashes and with ``-`` as ``_``."""
    name = next((f for f in flags if f.startswith("--")), flags[0])
    return name.lstrip("-").replace("-", "_")


def _option(args: list[str], i: int, grammar: Grammar, values: dict[str, Any]) -> int:
    """Read the option at ``args[i]`` into ``values``; the index after it, or -1 to
    decline."""
    arg = args[i]
    explicit = None
    if arg not in grammar.options:
        arg, eq, explicit = arg.partition("=")
        if not (eq and explicit and arg.startswith("--") and arg in grammar.options):
            return -1
    dest, action, kind, choices = grammar.options[arg]
    if not dest:
        return -1
    if action == "store_true":
        if explicit is not None:
            return -1
        values[dest] = True
        return i + 1
    if explicit is not None:
        raw, after = explicit, i + 1
    elif i + 1 < len(args) and not args[i + 1].startswith("-"):
        raw, after = args[i + 1], i + 2
    else:
        return -1
    try:
        value = raw if kind is None else kind(raw)
    except Exception:  # argparse words the error
        return -1
    if choices is not None and value not in choices:
        return -1
    if action == "append":
        values[dest] = [*(values.get(dest) or []), value]
    else:
        values[dest] = value
    return after


def _ambiguous(arg: str, strings: Collection[str]) -> bool:
    """Whether argparse stops at ``arg`` with "ambiguous option" (it looks at every word
    of a command line, even those a REMAINDER positional then takes): not one of the
    parser's option strings, and a prefix of two or more of them."""
    if len(arg) < 2 or arg[0] != "-" or arg in strings:
        return False
    name = arg.split("=", 1)[0]
    if "=" in arg and name in strings:
        return False
    if arg[1] == "-":
        matches = [s for s in strings if s.startswith(name)]
    else:
        matches = [s for s in strings if s == arg[:2] or s.startswith(arg)]
    return len(matches) > 1


def parse(
    args: list[str], top: Grammar, grammar: Callable[[str], Grammar | None]
) -> dict[str, Any] | None:
    """``vars(parser.parse_args(args))`` for a plain command line, else None.

    ``top`` holds the options the parser takes before the subcommand; ``grammar(name)``
    records the grammar of subcommand ``name`` (its own options and the global ones), or
    is None when there is no such subcommand; it is called for the one ``args`` runs. The
    subcommand's name is under ``subcommand``.
    """
    if "--" in args or any(_ambiguous(arg, top.options) for arg in args):
        return None
    values: dict[str, Any] = {"subcommand": None}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i = _option(args, i, top, values)
        if i < 0:
            return None
    sub_grammar = grammar(args[i]) if i < len(args) else None
    if sub_grammar is None or not sub_grammar.supported:
        return None
    if any(_ambiguous(arg, sub_grammar.options) for arg in args[i + 1 :]):
        return None
    values["subcommand"] = args[i]
    # argparse's subparser fills a namespace of its own, then copies it over the parent's.
    sub = dict(sub_grammar.defaults)
    remainder = sub_grammar.remainder
    i += 1
    while i < len(args):
        if args[i].startswith("-"):
            i = _option(args, i, sub_grammar, sub)
            if i < 0:
                return None
        elif remainder is not None:
            sub[remainder] = args[i:]
            break
        else:
            return None
    if remainder is not None:
        sub.setdefault(remainder, [])
    values.update(sub)
    return values


class Namespace:
    """The values :func:`parse` read, as attributes (what ``argparse.Namespace`` gives)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"
