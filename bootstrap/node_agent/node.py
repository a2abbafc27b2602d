"""The node's side effects for the agent's modules: commands, `which`, the log, the clock. Tests pass a fake with the
same methods; the join script's log takes our stdout (each line stamped there)."""

import os
import shutil
import subprocess
import sys
import time

from .common import NodeError


class Node:
    sleep = staticmethod(time.sleep)
    clock = staticmethod(time.monotonic)

    def log(self, line):
        print(line, flush=True)

    def which(self, name):
        return shutil.which(name)

    def run(self, argv, env=None, quiet=False, input=None):
        """The exit status; output to the log (or nowhere when quiet); stdin: INPUT (a secret goes only this way) or
        nothing, never a terminal's."""
        sys.stdout.flush()  # our lines before the command's own
        out = subprocess.DEVNULL if quiet else None
        full_env = dict(os.environ, **env) if env else None
        try:
            return subprocess.run(argv, input=input, stdin=subprocess.DEVNULL if input is None else None, stdout=out,
                                  stderr=out, env=full_env, universal_newlines=True).returncode
        except OSError:
            return 127  # as a shell says for a command it cannot run

    def output(self, argv):
        """stdout and stderr together (what `$(cmd 2>&1)` gives), whatever the exit status."""
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, errors="replace").stdout
        except OSError:
            return ""

    def main(self, work):
        """Runs the command's work; a NodeError is the script's "ERROR: ..." line and exit code."""
        try:
            work()
        except NodeError as e:
            self.log(f"ERROR: {e}")
            sys.exit(e.code)
