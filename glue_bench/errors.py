"""The errors that mean "bad input" (reported as one line) rather than a bug (a traceback)."""

from glue_bench.evaluate import EvalError
from glue_bench.merge import MergeError
from glue_bench.results import ResultsError
from glue_bench.zoo import ZooError


class JobError(Exception):
    """A job's configuration is unusable; one line naming the fault."""


USER_ERRORS = (EvalError, JobError, MergeError, ResultsError, ZooError)
