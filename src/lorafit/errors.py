"""The one exception type users see: a clear, single-line message, exit code 2."""


class LorafitError(Exception):
    """Bad input or an impossible setup. The CLI prints ``error: <message>`` and exits 2.

    Messages name the file or config field at fault and the fix, on one line.
    """

    exit_code = 2


class BudgetError(LorafitError):
    """The trainable-parameter count exceeds ``budget.max_trainable``."""


class TrainingDiverged(LorafitError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


class Interrupted(LorafitError):
    """SIGINT/SIGTERM stopped a run; the message says what was kept and what to run next. The CLI
    prints it as it is (not as an error) and exits 130, as a shell does for Ctrl-C."""

    exit_code = 130
