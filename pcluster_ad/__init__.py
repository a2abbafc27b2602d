"""pcluster-ad, one import package: `from pcluster_ad import automation, stack_config`.

The package IS the checkout's top level: `pcluster_ad.program` is program.py, `pcluster_ad.components` is
components/, and the files the program reads at run time (lambda_src/, bootstrap/, tools/, pcluster_version.txt)
sit where the modules expect them, relative to the package. A wheel carries exactly that tree as
site-packages/pcluster_ad/ (pyproject.toml maps the package to the checkout's top level); in a checkout this
directory stands in for the package, so `pulumi up`, the tests and `python -m pcluster_ad.tools.plan` run from the
checkout without an install.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent)]
