"""The checkout's top-level `stack_config` module itself, under this package (see pcluster_ad/__init__.py)."""

import sys

import stack_config

sys.modules[__name__] = stack_config
