"""What every command-line program of the project shares: user errors as one ``error:`` line, finite numbers.

    if __name__ == "__main__":
        run_cli(main, parse_args)

A user error (a bad flag, file or folder, a full disk) ends the program with ``<prog>: error: <what and what
to do>`` on stderr, as argparse does, instead of a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys


class UsageError(ValueError):
    """A user error: names the flag or file at fault and says what to do. CLIs print it as one line."""

    exit_code = 2


class TrainingDivergedError(UsageError):
    """Training produced weights that are not finite: nothing is saved as a pipeline."""

    exit_code = 1


class DiskFullError(UsageError):
    """A write ran out of space: says how much the write needs and how to go on."""

    exit_code = 1


# Errors of the machine's state, not of the program: they are reported in one line too.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def finite_float(text: str) -> float:
    """argparse type: a finite number (NaN and ±inf are refused: they silently train NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_os_error(error: OSError) -> str:
    """One line for an OSError of the machine's state: what failed, on which file, and what to do."""
    where = f" ({error.filename})" if error.filename else ""
    what = ENVIRONMENT_ERRNOS.get(error.errno, error.strerror or str(error))
    hint = (
        "free space (or choose an output folder on another disk), then run the same command again: "
        "a training run resumes with --resume_from_checkpoint latest"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else "choose a folder this user can write"
    )
    return f"{what}{where}: {hint}."


def run_cli(main, parse_args, argv=None, prog: str | None = None):
    """``main(parse_args(argv))``; a UsageError or an OSError of the machine's state exits with one error line."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main(parse_args(argv))
    except UsageError as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(error.exit_code)
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"{prog}: error: {one_line(describe_os_error(error))}", file=sys.stderr)
        sys.exit(1)
