"""One help style for every sub-command: required options say so, each default is printed once
(never "(default: None)" and never twice), and no JAX is imported to print it."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` lines: ``(required)`` after a required option's help; ``(default: X)`` after
    an optional one's, unless its default is empty (None, False, []) or the help already says
    it (``%(default)s`` or the word "default")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        said = "%(default)" in text or "default" in text.lower()
        d = action.default
        empty = d is None or d is False or d == [] or d is argparse.SUPPRESS
        if said or empty or (not action.option_strings and action.nargs not in ("?", "*")):
            return text
        return f"{text} (default: %(default)s)"
