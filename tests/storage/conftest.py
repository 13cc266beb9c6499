# The S3 fixtures (moto server on loopback, fault proxy). Imported, not `pytest_plugins`: pytest
# only allows that in the top-level conftest.
from tests.support.s3server import s3_env, s3_fault_proxy, s3_server  # noqa: F401
