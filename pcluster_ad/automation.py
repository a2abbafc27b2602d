"""The checkout's top-level `automation` module itself, under this package (see pcluster_ad/__init__.py)."""

import sys

import automation

sys.modules[__name__] = automation
