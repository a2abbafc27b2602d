"""What every command shares: its error exit, and the check of a one-line value."""

import sys


def fail(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


def one_line(s):
    return isinstance(s, str) and s != "" and not any(c in s for c in "\0\r\n")


class Die(Exception):
    """The script's `die CODE MESSAGE`: the command logs "ERROR: MESSAGE" on stdout and exits CODE."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
