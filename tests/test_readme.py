"""The command lines the README and docs/ show use flags their scripts accept (a renamed flag fails here first)."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = [ROOT / f for f in ("train.py", "val.py", "detect.py", "export.py", *(
    str(p.relative_to(ROOT)) for p in sorted((ROOT / "benchmarks").glob("*.py"))))]
COMMAND = re.compile(r"(?:^|\s)(?:python3?|torchrun(?:\s+--\S+(?:\s+\d+)?)*)\s+((?:[a-z_]+/)?[a-z_]+\.py)\b(.*)", re.S)
SHELL_END = re.compile(r"\s(?:&&|\|\||\||;|>|2>|#)")
PASS_THROUGH = {"benchmarks/loss_ablation.py", "benchmarks/default_run.py"}  # unknown flags go on to train.py


class _Parser(Exception):
    """Carries the parser a script built, raised instead of parsing."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def _capture(self: argparse.ArgumentParser, *args, **kwargs):
    raise _Parser(self)


def code_spans(text: str) -> list[str]:
    """The text of every fenced block line (backslash continuations joined) and every inline `code` span."""
    spans = []
    for i, block in enumerate(re.split(r"^```.*$", text, flags=re.M)):
        if i % 2:  # inside a fence
            spans += block.replace("\\\n", " ").splitlines()
        else:
            spans += re.findall(r"`([^`]+)`", block)
    return spans


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(script, argument tokens) for each `python script.py ...` or `torchrun ... script.py ...` shown in path: a
    markdown file's code, or the lines of a Python script's docstring (its Usage)."""
    text = path.read_text()
    spans = ast.get_docstring(ast.parse(text)).splitlines() if path.suffix == ".py" else code_spans(text)
    found = []
    for span in spans:
        for m in COMMAND.finditer(span):
            args = SHELL_END.split(" " + m.group(2).replace("\n", " "))[0]
            try:
                found.append((m.group(1), shlex.split(args)))
            except ValueError:  # an unbalanced quote inside prose
                found.append((m.group(1), args.split()))
    return found


def option_strings(script: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.Action]:
    """Every --flag the script's argument parser accepts and its action (train.py's too for scripts that pass
    flags on)."""
    module = importlib.import_module(script[:-3].replace("/", "."))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", _capture)
    try:
        (getattr(module, "parse_opt", None) or module.main)([])
    except _Parser as e:
        opts = dict(e.parser._option_string_actions)
    finally:
        monkeypatch.undo()
    return {**(option_strings("train.py", monkeypatch) if script in PASS_THROUGH else {}), **opts}


def unknown_flags(tokens: list[str], opts: dict[str, argparse.Action]) -> list[str]:
    """The --flags among tokens that are neither an option nor argparse's unique abbreviation of one (a token
    that is the value of the option before it, as in --variant "--bf16", is a value)."""
    bad, value_next = [], False
    for tok in tokens:
        flag, is_value, value_next = tok.split("=", 1)[0], value_next, False
        if is_value or not re.fullmatch(r"--[a-z][a-z0-9_-]*", flag):
            continue
        actions = {id(a): a for o, a in opts.items() if o == flag} or {id(a): a for o, a in opts.items()
                                                                       if o.startswith(flag)}
        if len(actions) != 1:
            bad.append(flag)
        else:
            value_next = next(iter(actions.values())).nargs is None and "=" not in tok
    return bad


def test_code_spans_and_commands_are_found_in_markdown(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("Run `python val.py --weights a.pt\n--img 320` or\n```bash\npython train.py --data d.yaml \\\n"
                  "    --epochs 3  # comment\ntorchrun --nproc_per_node 2 train.py --batch-size 64 > log.txt\n```\n")
    assert commands(md) == [("val.py", ["--weights", "a.pt", "--img", "320"]),
                            ("train.py", ["--data", "d.yaml", "--epochs", "3"]),
                            ("train.py", ["--batch-size", "64"])]


def test_unknown_flags_allows_aliases_and_unique_abbreviations(monkeypatch):
    opts = option_strings("val.py", monkeypatch)
    assert unknown_flags(["--img", "640", "--batch", "32", "--conf-thres=0.1", "<file>"], opts) == []
    assert unknown_flags(["--no-such-flag", "--s"], opts) == ["--no-such-flag", "--s"]  # --s: ambiguous
    assert unknown_flags(["--project", "--not-a-flag", "--not-a-flag"], opts) == ["--not-a-flag"]  # 1st: a value


@pytest.mark.parametrize("doc", DOCS + SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_use_flags_their_scripts_accept(doc, monkeypatch):
    shown = commands(doc)
    assert doc.name != "README.md" or len(shown) > 50  # the README shows every entry point
    assert [s for s, _ in shown if not (ROOT / s).is_file()] == []  # no renamed or removed script
    bad = []
    for script, tokens in shown:
        flags = unknown_flags(tokens, option_strings(script, monkeypatch))
        bad += [f"python {script} {' '.join(tokens)}: {', '.join(flags)}"] if flags else []
    assert not bad, "\n".join(bad)
