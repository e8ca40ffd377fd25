"""Bad-record reporting shared by every reader.

A reader either raises :class:`DataError` (naming file, line and reason) or,
when the user asked for ``on_error: skip``, records the skip in a
:class:`SkipCounter` so that the count reaches the logs.
"""
import os
from collections import Counter

from ..files import atomic_text_file

ON_ERROR_CHOICES = ("raise", "skip")
TRUNCATED = "kept, caption truncated to max_len"


def split_where(where):
    """``"path:12"`` -> ``("path", 12)``; a bare file path -> ``(path, None)``."""
    path, _, line = where.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return where, None


class DataError(ValueError):
    """A bad record, located by file and 1-based line (or record) number."""

    def __init__(self, path, line, reason):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Rebuilt from its own fields when it crosses from a worker process:
        # the default pickling passes the one message to a three-argument __init__.
        return type(self), (self.path, self.line, self.reason)

    def __eq__(self, other):
        return type(self) is type(other) and (self.path, self.line, self.reason) == (other.path, other.line, other.reason)

    __hash__ = ValueError.__hash__


class SkipCounter:
    """The skipped records, each once: ``{file:line: reason}``; raises instead when the policy is 'raise'.

    A record is keyed by where it is, so the same bad line met again on the next
    pass over the data (a new epoch) is not counted twice.
    """

    EXAMPLES = 5

    def __init__(self, on_error="raise"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.skipped = {}
        self.truncated = set()  # records kept with their caption cut to the tokenizer's max_len

    def note_truncated(self, where):
        self.truncated.add(where)

    def report(self, error):
        """Raise ``error`` or record it, depending on the policy."""
        if self.on_error == "raise":
            raise error
        where = error.path if error.line is None else f"{error.path}:{error.line}"
        self.skipped.setdefault(where, error.reason)

    @property
    def total(self):
        return len(self.skipped)

    @property
    def by_reason(self):
        return Counter(reason.split(":")[0] for reason in self.skipped.values())

    @property
    def examples(self):
        return [f"{where}: {reason}" for where, reason in list(self.skipped.items())[: self.EXAMPLES]]

    def merge(self, other):
        for where, reason in other.skipped.items():
            self.skipped.setdefault(where, reason)
        self.truncated |= other.truncated

    def summary(self):
        cut = f"; {len(self.truncated)} captions truncated to max_len (kept)" if self.truncated else ""
        if not self.total:
            return "no records skipped" + cut
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.by_reason.most_common())
        return f"skipped {self.total} bad records ({parts}); first: {'; '.join(self.examples[:3])}" + cut

    def write_report(self, path):
        """Every skipped record as ``where<TAB>reason`` lines (atomically); returns ``path``, or None if none.

        Records kept with a truncated caption follow, as ``kept, caption truncated`` lines.
        """
        if not self.skipped and not self.truncated:
            return None
        with atomic_text_file(path) as f:
            f.write("where\treason\n")
            for where, reason in self.skipped.items():
                f.write(f"{where}\t{reason}\n".replace("\r", " "))
            for where in sorted(self.truncated):
                f.write(f"{where}\t{TRUNCATED}\n")
        return path


def skip_report_path(output):
    """Where a tool that writes ``output`` lists its skipped records: beside it."""
    root, _ = os.path.splitext(output)
    return root + ".skipped.tsv"
