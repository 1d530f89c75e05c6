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
