"""Tasks accepted before a stop are run after a restart."""

from soundry.tasks.models import Task
from tests.conftest import make_settings, wait_for


def test_restart_completes_pending_and_interrupted_tasks(tmp_path, tiny_models, database_url):
    from fastapi.testclient import TestClient

    from soundry.api.app import create_app
    from soundry.tasks.store import TaskStore

    settings = make_settings(tmp_path, database_url=database_url)
    # A previous server accepted these and stopped: one PENDING, one PROCESSING mid-way.
    store = TaskStore(settings.database_url)
    from soundry.service.accounts import Accounts

    user = Accounts(store, settings.secret).create_user("carol", "carol password")
    cfg = {"model": "audiogen", "duration": 0.5, "top_k": 15, "top_p": 0.9, "temperature": 1.0, "cfg_coef": 3.0,
           "seed": None, "output_format": "wav", "normalization": "loudness", "target_lufs": -14.0}
    pending = store.create(Task(user_id=user.id, prompt="rain", config=cfg, model="audiogen"))
    interrupted = store.create(Task(user_id=user.id, prompt="wind", config=cfg, model="audiogen",
                                    status="PROCESSING", percent=40, worker="dead-worker"))
    store.engine.dispose()

    app = create_app(settings)
    with TestClient(app) as client:
        tokens = app.state.services.accounts.issue_tokens(user)
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        for task in (pending, interrupted):
            assert wait_for(client, task.id, headers)["status"] == "COMPLETED"
        assert app.state.services.store.get(interrupted.id).attempts == 1
