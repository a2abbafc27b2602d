"""The command line: `COMMAND ARGS... [--then COMMAND ARGS...]`, data (secrets included) on stdin, answers on stdout,
errors on stderr.

Only the command's module is imported: the script starts Python a dozen times in a join.
"""

import importlib
import sys

COMMANDS = {"node-config": ("sssd_config", "node_config"), "daemon-opts": ("sssd_config", "daemon_opts"),
            "access": ("access", "configure_cli"), "login-access": ("access", "login_access_cli"),
            "check-access-groups": ("access", "check_groups_cli"),
            "joined-realm": ("sssd_config", "joined_realm"),
            "imds-address": ("imds_lockdown", "imds_address"),
            "restrict-imds": ("imds_lockdown", "restrict_imds_cli"),
            "sssd-cache": ("sssd_service", "cache_in_memory_cli"), "sssd-start": ("sssd_service", "start_cli"),
            "pam-update": ("pam", "pam_update_cli"), "adcli-join": ("join", "adcli_join_cli"),
            "fetch-join": ("join_client", "fetch_join_cli"), "close-window": ("join_client", "close_window_cli")}


THEN = "--then"  # COMMAND ARGS... --then COMMAND ARGS...: one Python start for steps that follow each other


def main(argv=None):
    words = (sys.argv if argv is None else argv)[1:]
    while words:
        step = words[:words.index(THEN)] if THEN in words else words
        words = words[len(step) + 1:]
        module, name = COMMANDS[step[0]]
        try:
            getattr(importlib.import_module("." + module, __package__), name)(*step[1:])
        except SystemExit as e:
            if e.code not in (None, 0) or not words:
                raise  # the first failing step ends the chain with its own exit code, as `a || exit; b` does


if __name__ == "__main__":
    main()
