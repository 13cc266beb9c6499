"""`bertctl run`'s embedded manager serves the dashboard too; its token reaches the user through a
0600 file, never the terminal."""

from __future__ import annotations

import stat

import httpx

from orchestrator.cli.train_cmds import _ui_token_file
from orchestrator.manager.embedded import EmbeddedManager

from tests.manager.conftest import FAKE_TRAINER


def test_the_embedded_manager_serves_the_dashboard_to_its_token(tmp_path):
    with EmbeddedManager(data_dir=tmp_path / "run", trainer_command=FAKE_TRAINER) as em:
        path = _ui_token_file(em.data_dir, em.token)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == em.token
        with httpx.Client(base_url=em.url, timeout=10) as browser:
            assert 'id="login-form"' in browser.get("/ui").text
            signed_in = browser.post("/ui/login", data={"token": path.read_text().strip()})
            assert signed_in.status_code == 303 and "bertctl_token" in browser.cookies
            assert 'id="view"' in browser.get("/ui").text
            assert browser.get("/ui/api/jobs").json()["jobs"] == []
