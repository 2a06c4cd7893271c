"""What every command-line tool shares: help text without reStructuredText markup, integer arguments with a stated
range, and output folders that are never replaced or mixed without ``--overwrite``."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`")  # :func:`x`, :class:`~a.B`, :ref:`text <target>`
_LITERAL = re.compile(r"``(.+?)``|`([^`\n]+)`", re.S)


def plain(text: str | None) -> str | None:
    """``text`` as a terminal shows it: reStructuredText roles (``:func:`a.b```, ``:class:`~a.B```) become their
    target (the last name with ``~``), double and single back-quoted literals lose their quotes."""
    if not text:
        return text

    def role(m: re.Match) -> str:
        target = m.group(1).strip()
        return target.rsplit(".", 1)[-1] if m.group(0).split("`", 1)[1].startswith("~") else target

    text = _ROLE.sub(role, text)
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)


class PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs kept as written (line breaks included; a paragraph written as one long line is
    wrapped) and argument help wrapped, all without reStructuredText markup (:func:`plain`)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out = []
        for para in text.split("\n\n"):
            if "\n" not in para.strip() and len(para) > width:
                out.append(textwrap.fill(para.strip(), width, initial_indent=indent, subsequent_indent=indent))
            else:
                out.append(super()._fill_text(para, width, indent).rstrip("\n"))
        return "\n\n".join(out)

    def _expand_help(self, action) -> str:
        return plain(super()._expand_help(action))


def int_at_least(low: int, what: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``; anything else is the one-line usage error argparse prints."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}{what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}{what}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def output_error(path: Path, holds: str, flag: str | None = "--overwrite") -> str:
    fix = f"pass {flag} to replace it, or " if flag else ""
    return f"{path} exists and holds {holds}; {fix}choose another output folder"


def _describe(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
    return shown


def check_output_folder(path: str | Path, overwrite: bool = False, reusable: Callable[[Path], bool] | None = None,
                        flag: str | None = "--overwrite") -> Path:
    """The folder a command is about to write, checked before any work: a regular file there is refused; an existing
    folder that is not empty is refused unless ``overwrite`` or ``reusable(path)`` (the command's own earlier output,
    which it continues). Raises a one-line :class:`~mindvis.data.fmri.DataError`."""
    from ..data.fmri import DataError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} is a file, not a folder: give a folder to write into")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: {parent} is a file, not a folder")
            break
    if path.is_dir() and any(path.iterdir()) and not overwrite and not (reusable and reusable(path)):
        raise DataError(output_error(path, _describe(path), flag))
    return path


def check_output_file(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """A file a command is about to write: an existing one is replaced only with ``overwrite``; a folder there is
    refused."""
    from ..data.fmri import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder: give the file to write")
    if path.exists() and not overwrite:
        raise DataError(f"{path} exists; pass {flag} to replace it, or choose another file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: {parent} is a file, not a folder")
            break
    return path
