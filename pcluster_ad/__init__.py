"""pcluster-ad as an importable package: `pip install -e <checkout>`, then

    from pcluster_ad import automation, stack_config

The program's modules live at the checkout's top level (the Pulumi program, `__main__.py`, and the tests import
them as `automation`, `stack_config`, ...); each submodule here IS that module (same object, not a copy), so
`pcluster_ad.stack_config.ConfigError` is the class `automation` raises. Editable installs only: the program
reads lambda_src/ and bootstrap/ from the checkout.
"""
