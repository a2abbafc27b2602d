"""Packaging: only what pyproject.toml cannot say about the package `pcluster_ad`, which is the checkout's top level.

- The wheel gets its own pcluster_ad/__init__.py (the top level has none; in a checkout pcluster_ad/__init__.py stands
  in for it), so that the installed package is a regular one. A namespace package merges in any `pcluster_ad/`
  directory on sys.path (the current directory's first) and gives way to a regular `pcluster_ad` anywhere on it.
- Of the top level's modules only the package's own ride along: a wheel is built from a working checkout, where a
  user's own script (the README's embed.py, a helper holding a secret) may sit beside them.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODULES = {"__main__", "automation", "cluster_config", "program", "stack_config", "update_policy"}
INIT = '"""pcluster-ad, installed from a wheel: `from pcluster_ad import automation, stack_config`."""\n'


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if m[0] != "pcluster_ad" or m[1] in MODULES]

    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install maps pcluster_ad to the checkout itself
            (Path(self.build_lib) / "pcluster_ad" / "__init__.py").write_text(INIT, encoding="utf-8")


setup(cmdclass={"build_py": BuildPy})
