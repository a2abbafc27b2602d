"""Entry point for `pulumi up|preview|destroy`: see program.py."""

from program import pulumi_program

pulumi_program()
