"""The checkout's top-level `cluster_config` module itself, under this package (see pcluster_ad/__init__.py)."""

import sys

import cluster_config

sys.modules[__name__] = cluster_config
