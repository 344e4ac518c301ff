"""Command-line help shared by the entry points (train.py, val.py, detect.py, export.py)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse help that appends ``(default: X)`` where X says something: not for flags, None or empty defaults,
    nor where the help text already gives the default in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The help text, with the default appended when it is informative."""
        text = action.help or ""
        default = action.default  # by identity: 0 and 0.0 are defaults worth showing, though they equal False
        silent = default is None or default is False or default == "" or default == argparse.SUPPRESS \
            or action.nargs == 0
        if silent or "%(default)" in text or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"
