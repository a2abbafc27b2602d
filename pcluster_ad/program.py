"""The checkout's top-level `program` module itself, under this package (see pcluster_ad/__init__.py)."""

import sys

import program

sys.modules[__name__] = program
