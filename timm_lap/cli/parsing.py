"""The argument parser every ``timm-lap`` command uses: short usage, defaults in the help, errors last.

    parser = CliParser(prog="timm-lap bench", description="...")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")   # help shows "(default: 5)"

Stdlib only: ``timm-lap CMD --help`` and argument errors must not wait for torch to import.
"""
from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, NoReturn

__all__ = ["CliParser", "DefaultsHelpFormatter"]

_ARGUMENT_ERROR = re.compile(r"^argument ([^:]+): ")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.+)$")


def _shown_default(action: argparse.Action) -> str | None:
    """The default as the help shows it, or None where it says nothing (switches, no default, help says it)."""
    default = action.default
    if action.help and "default" in action.help.lower():
        return None
    if default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default == "":
        return None
    if action.nargs == 0:  # store_const-like switches
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default) if default else None
    if isinstance(default, dict):
        return None if not default else str(default)
    return str(default)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help lines end with ``(default: X)`` wherever there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = _shown_default(action)
        if shown is not None:
            text = f"{text} (default: {shown.replace('%', '%%')})".strip()
        return text


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors print the failing flag's own line, then the error, last.

    A bad value of ``--lr`` prints ``--lr LR  <its help>`` and ``timm-lap train: error: ...``; an unknown flag gets
    the closest known flags; ``--help`` points to the full list. The exit status stays 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --seed must never silently mean --seeds (or the reverse)
        super().__init__(*args, **kwargs)

    def _action_named(self, names: str) -> argparse.Action | None:
        wanted = set(names.split("/"))
        for action in self._actions:
            if wanted & set(action.option_strings) or (not action.option_strings and action.dest in wanted):
                return action
            if action.metavar in wanted and not action.option_strings:
                return action
        return None

    def _flag_line(self, action: argparse.Action) -> str:
        usage = self._get_formatter()._format_action_invocation(action)
        help_text = DefaultsHelpFormatter(self.prog)._get_help_string(action) or ""
        if "%(" in help_text:
            help_text = help_text % dict(vars(action), prog=self.prog)
        return f"  {usage}    {help_text.replace('%%', '%')}".rstrip()

    def _context(self, message: str) -> list[str]:
        argument = _ARGUMENT_ERROR.match(message)
        action = self._action_named(argument.group(1)) if argument else None
        if action is not None:
            return [self._flag_line(action)]
        unknown = _UNRECOGNIZED.match(message)
        if unknown:
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            lines = []
            for word in unknown.group(1).split():
                flag = word.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=3) if flag.startswith("-") else []
                if close:
                    lines.append(f"  {flag}: did you mean {', '.join(close)}?")
            return lines
        return []

    def error(self, message: str) -> NoReturn:
        lines = [f"usage: {self.prog} [options]   (every flag: {self.prog} --help)", *self._context(message),
                 f"{self.prog}: error: {message}"]
        self.exit(2, "\n".join(lines) + "\n")
