"""The test suite's own speed-ups keep what the tests see: the botocore loader cache shared across sessions
(tests/conftest.py) gives every session the same models it would have loaded, and only for the same search paths."""

from __future__ import annotations

import boto3
from botocore import loaders


def test_sessions_share_loaded_models_only_for_the_same_search_paths(tmp_path):
    one = boto3.Session(region_name="eu-west-1")._session.get_component("data_loader")
    two = boto3.Session(region_name="eu-west-1")._session.get_component("data_loader")
    assert one is not two and one.search_paths == two.search_paths
    model = one.load_service_model("sts", "service-2")
    assert two.load_service_model("sts", "service-2") is model  # loaded once, as within one session
    fresh = loaders.Loader(include_default_search_paths=False)  # nothing to search: it must not get the shared one
    fresh.search_paths.append(str(tmp_path))
    assert ("load_service_model", "sts", "service-2") not in fresh._cache
    other = loaders.Loader(extra_search_paths=[str(tmp_path)])  # another path list: its own entries
    assert ("load_service_model", "sts", "service-2") not in other._cache
    assert other.load_service_model("sts", "service-2") == model  # same content, found by its own search
