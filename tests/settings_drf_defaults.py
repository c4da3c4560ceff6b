"""The test settings with DRF's own schema class: a site that does not use drf-spectacular
for its own API (tests/test_api_schema.py serves the actions schema under it)."""

from tests.settings import *  # noqa: F403

REST_FRAMEWORK = {
    key: value
    for key, value in REST_FRAMEWORK.items()  # noqa: F405
    if key != "DEFAULT_SCHEMA_CLASS"
}
