"""The two ways input data fails: a whole drop (`DropError`) or one row (`RowError`)."""


class DropError(Exception):
    """The whole drop is unusable: the message names the file, the line where known, and the problem."""


class RowError(ValueError):
    """One row is unusable; the message is the reason a person reads in the quarantine file, `code` its class."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
