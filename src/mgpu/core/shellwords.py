"""Which characters a POSIX shell takes literally, and quoting a word for it.

One rule for every side: the client joins a job's words into the command line it shows
(``shlex.join``'s output), and the keeper runs a command line without ``/bin/sh`` when it is
only such words separated by spaces. Written out rather than imported from ``shlex``,
which imports ``re``: ``mgpu submit`` and the keeper both start lean.
"""

from __future__ import annotations

# The characters shlex.quote leaves unquoted: [\w@%+=:,./-] with re.ASCII.
SHELL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``shlex.quote(word)``: ``word`` as one shell word, quoted only when it must be."""
    if not word:
        return "''"
    if SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"
