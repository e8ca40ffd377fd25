"""Bad-record reporting shared by every reader.

A reader either raises :class:`DataError` (naming file, line and reason) or,
when the user asked for ``on_error: skip``, records the skip in a
:class:`SkipCounter` so that the count reaches the logs.
"""
from collections import Counter

ON_ERROR_CHOICES = ("raise", "skip")


class DataError(ValueError):
    """A bad record, located by file and 1-based line (or record) number."""

    def __init__(self, path, line, reason):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class SkipCounter:
    """Counts skipped records by reason; raises instead when policy is 'raise'."""

    def __init__(self, on_error="raise"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.by_reason = Counter()
        self.examples = []

    def report(self, error):
        """Raise ``error`` or count it, depending on the policy."""
        if self.on_error == "raise":
            raise error
        self.by_reason[error.reason.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self):
        return sum(self.by_reason.values())

    def merge(self, other):
        self.by_reason.update(other.by_reason)
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    def summary(self):
        if not self.total:
            return "no records skipped"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.by_reason.most_common())
        return f"skipped {self.total} bad records ({parts}); first: {self.examples[0]}"
