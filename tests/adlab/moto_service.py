"""What the lab's AWS stand-ins share (labsvc.py and dirsvc.py: programs run in the lab's switch namespace).

moto starts in their main(), never at import: a test imports their helpers, and a mock started at import never
stops, so every later mock_aws() of that test process would keep the state of the one before."""

from __future__ import annotations

import os

from moto import mock_aws

MOCK = mock_aws()


def isolate_from_aws() -> None:
    """Never let botocore look for real credentials or real endpoints; then start moto (it intercepts all calls)."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ.pop(var, None)
    MOCK.start()
