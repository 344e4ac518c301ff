"""Project logger and terminal colours; nothing is configured at import time."""

from __future__ import annotations

import logging
import os
import re

LOGGER_NAME = "slideyolo"


def get_logger() -> logging.Logger:
    """Return the project logger, adding a plain stream handler on first use (rank 0 only logs INFO)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        rank = int(os.environ.get("RANK", -1))
        logger.setLevel(logging.INFO if rank in (-1, 0) else logging.WARNING)
        logger.propagate = False
    return logger


_COLOURS = {
    "black": "\033[30m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m", "blue": "\033[34m",
    "magenta": "\033[35m", "cyan": "\033[36m", "white": "\033[37m", "bold": "\033[1m", "underline": "\033[4m",
    "end": "\033[0m",
}


def plain(text: str) -> str:
    """text without ANSI colour codes (a colorstr prefix inside an error message)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def colorstr(*args: str) -> str:
    """Wrap the last argument in ANSI codes named by the others, e.g. colorstr('blue', 'bold', 'train: ')."""
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    return "".join(_COLOURS[s] for s in styles) + f"{text}" + _COLOURS["end"]
