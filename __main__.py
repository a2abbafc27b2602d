"""Entry point for `pulumi up|preview|destroy`: see program.py."""

from pcluster_ad.program import pulumi_program

pulumi_program()
