"""Errors the runner reports without a traceback."""

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (as a shell reports SIGINT)


class UserError(Exception):
    """Bad input: a clear message, exit status 2, nothing half-written."""

    exit_code = 2

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class StageFailed(Exception):
    """A stage could not finish for a reason outside the user's input (a crash, a dead server)."""

    exit_code = 1


class Detached(Exception):
    """A stage started work that goes on elsewhere (an Azure ML job in a sweep): recorded as submitted, not done.

    The next run of the stage picks it up from its outputs (the job's name) instead of starting it again.
    """

    def __init__(self, outputs: dict, message: str = ""):
        self.outputs = outputs
        super().__init__(message or "submitted")
