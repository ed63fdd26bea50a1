"""What every command-line program of the package shares.

* :func:`run` turns the package's errors (:class:`~espnet_imlspike.errors.ImlSpikeError`)
  into ``prog: error: message`` with exit code 2, as argparse does for bad flags, never a
  traceback for a user error.
* :class:`OutputDir` checks the output directory before the heavy work starts (it must
  be creatable; one that already holds this program's outputs is refused unless
  ``--overwrite true``) and prepares it only when the results are ready (then exactly
  the earlier outputs are removed, so a re-run never mixes its files with an earlier
  run's, and a failed run loses nothing).
* Boolean flags are written as ESPnet writes them (``str2bool``: true/false).
"""

import argparse
import os
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from espnet_imlspike.errors import ImlSpikeError, InputError


def str2bool(value: str) -> bool:
    """ESPnet's boolean flag parser (espnet2.utils.types.str2bool), without importing
    ESPnet before the arguments are checked."""
    lowered = value.lower()
    if lowered in ("true", "yes", "y", "1"):
        return True
    if lowered in ("false", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_bool(parser: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    parser.add_argument(flag, type=str2bool, default=default, metavar="true|false",
                        help=f"{help} (default: {str(default).lower()})")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


class OutputDir:
    """A program's output directory: checked before the work, prepared just before writing.

    :meth:`check` (call it first) refuses a path that is a file or cannot be created, and a
    directory already holding this program's outputs unless ``overwrite``; nothing is
    created or removed then, so a run that fails later leaves no trace and loses nothing.
    :meth:`prepare` (call it right before writing) creates the directory and removes the
    earlier run's outputs, so they never mix with the new ones.
    """

    def __init__(self, path: Path, outputs: Iterable[str], overwrite: bool):
        self.path, self.outputs, self.overwrite = path, tuple(outputs), overwrite

    def check(self) -> "OutputDir":
        path = self.path
        if path.exists() and not path.is_dir():
            raise InputError(f"--output_dir {path} exists and is not a directory")
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"--output_dir {path} cannot be created: {ancestor} is not a "
                             "writable directory")
        present = [name for name in self.outputs if (path / name).exists()]
        if present and not self.overwrite:
            raise InputError(
                f"--output_dir {path} already holds {', '.join(present)} from an earlier "
                "run; pass --overwrite true to replace them, or choose another directory"
            )
        return self

    def prepare(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        for name in self.outputs:
            if (self.path / name).exists():
                (self.path / name).unlink()
        return self.path


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None],
        cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` and run ``body``; a package error exits with ``prog: error: ...``."""
    args = parser.parse_args(cmd)
    try:
        body(args)
    except ImlSpikeError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
