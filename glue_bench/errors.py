"""The errors that mean "bad input" (reported as one line) rather than a bug (a traceback)."""

import functools
import os
import sys
from typing import Callable, NoReturn



class UserError(Exception):
    """Bad input: a zoo, a setting, a file the user gave. Each layer's error (ZooError, EvalError,
    MergeError, ...) is one, so that this module, imported by every layer, imports none of them."""


class JobError(UserError):
    """A job's configuration is unusable; one line naming the fault."""


USER_ERRORS = (UserError,)
INTERRUPTED = ("interrupted: nothing partial is stored (a job's rows and outcomes land in one transaction, "
               "a zoo model in one rename); run it again to go on")


def fail(error) -> NoReturn:
    """The user's one line, `glue_bench: error: ...`, and exit status 1."""
    print(f"glue_bench: error: {one_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


def one_line(error) -> str:
    """A message of several lines (Hydra's "Could not find ..." with its list of options) as one:
    paragraphs joined by '. ', a paragraph's items after its "...:" header joined by ', '; the
    config search path Hydra appends is left out."""
    text = str(error).split("Config search path:")[0]
    paragraphs = []
    for block in text.strip().split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):
            paragraphs.append(f"{lines[0]} {', '.join(lines[1:])}")
        elif lines:
            paragraphs.append(" ".join(lines))
    return ". ".join(paragraphs)


def entry_point(main: Callable) -> Callable:
    """A module's command line (`python -m glue_bench.<module>`) ending every failure in one
    `glue_bench: error:` line, exit status 1: bad input (the errors above, a file that cannot be
    read or written) as it is; anything else as a bug (HYDRA_FULL_ERROR=1 shows its traceback);
    SIGINT as `INTERRUPTED`, exit status 130."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None):
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(f"glue_bench: error: {INTERRUPTED}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except (*USER_ERRORS, OSError) as exc:
            fail(exc)
        except Exception as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(f"{type(exc).__name__}: {one_line(exc)} (an unexpected failure, a bug: HYDRA_FULL_ERROR=1 "
                 "shows its traceback for a bug report)")
    return run
