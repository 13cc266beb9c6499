"""The CLI's manager client speaks the taxonomy: no answer is temporary (try again later), a refusal
is permanent."""

from __future__ import annotations

import pytest

from orchestrator.errors import PermanentError, TemporaryError
from orchestrator.manager.client import ManagerClient, ManagerUnreachable

from tests.manager.procs import free_port


def test_a_manager_that_does_not_answer_is_a_temporary_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = ManagerClient(url, token="t" * 20, timeout_s=2)
    try:
        with pytest.raises(ManagerUnreachable, match=f"cannot reach the manager at {url}.*bertctl server") as info:
            client.list()
    finally:
        client.close()
    assert isinstance(info.value, TemporaryError) and not isinstance(info.value, PermanentError)
    assert info.value.delay_s == 5.0
