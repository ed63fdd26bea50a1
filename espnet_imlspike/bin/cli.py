"""What every command-line program of the package shares.

* :func:`run` turns the package's errors (:class:`~espnet_imlspike.errors.ImlSpikeError`)
  into ``prog: error: message`` with exit code 2, as argparse does for bad flags, never a
  traceback for a user error.
* :func:`prepare_output_dir` checks the output directory before the heavy work starts:
  it must be creatable, and a directory that already holds this program's outputs is
  refused unless ``--overwrite true`` (then exactly those outputs are removed first, so
  a re-run never mixes its files with an earlier run's).
* Boolean flags are written as ESPnet writes them (``str2bool``: true/false).
"""

import argparse
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


def prepare_output_dir(path: Path, outputs: Iterable[str], overwrite: bool) -> None:
    """Create ``path``; refuse (or with ``overwrite`` clear) this program's old outputs."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--output_dir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--output_dir {path} cannot be created: {error.strerror}") from None
    present = [name for name in outputs if (path / name).exists()]
    if present and not overwrite:
        raise InputError(
            f"--output_dir {path} already holds {', '.join(present)} from an earlier run; "
            "pass --overwrite true to replace them, or choose another directory"
        )
    for name in present:
        (path / name).unlink()


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None],
        cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` and run ``body``; a package error exits with ``prog: error: ...``."""
    args = parser.parse_args(cmd)
    try:
        body(args)
    except ImlSpikeError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
