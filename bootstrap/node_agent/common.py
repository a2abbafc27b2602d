"""What every command shares: its error exit, and the check of a one-line value."""

import sys


def fail(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


def one_line(s):
    return isinstance(s, str) and s != "" and not any(c in s for c in "\0\r\n")


class NodeError(Exception):
    """A failure the join script reports as "ERROR: <message>" and exits with `code` (docs/design.md's exit codes)."""

    def __init__(self, message, code=9):
        super().__init__(message)
        self.code = code
