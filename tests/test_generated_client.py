"""A client generated from the committed OpenAPI document (docs/openapi.json) by openapi-python-client, as a
caller in another team would make one, drives the real API and worker: it indexes, queries, polls to a typed
result and deletes an id containing ``/``, ``#``, ``?`` and ``%``. The generator must finish without a warning:
one it skips (a model it cannot name, a response it drops) is what left callers with nothing when polling."""

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import natural_images

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "lookalike_openapi"  # not lookalike_client: that is the hand-written client's import name
ODD_ID = "uploads/a b#1?x=%41%/cat.jpg"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The generated package, imported."""
    folder = tmp_path_factory.mktemp("generated")
    config = folder / "config.yml"
    config.write_text(f"package_name_override: {PACKAGE}\nproject_name_override: lookalike-openapi\npost_hooks: []\n")
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path",
                          str(REPO / "docs" / "openapi.json"), "--config", str(config),
                          "--output-path", str(folder / "client"), "--fail-on-warning"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(folder / "client"))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder / "client"))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def finished(generated, client, task_id: str, timeout: float = 120):
    """Poll the task with the generated ``get_task`` until it has finished: a typed task of its kind."""
    get_task = importlib.import_module(f"{PACKAGE}.api.tasks.get_task")
    deadline = time.monotonic() + timeout
    while True:
        task = get_task.sync(task_id, client=client, wait=10)
        assert not isinstance(task, importlib.import_module(f"{PACKAGE}.models").Error), task
        if task.state.value in ("succeeded", "failed"):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def test_a_generated_client_indexes_queries_polls_typed_results_and_deletes_odd_ids(generated, api, collection):
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    index_image = importlib.import_module(f"{PACKAGE}.api.images.index_image")
    query_image = importlib.import_module(f"{PACKAGE}.api.queries.query_image")
    get_image = importlib.import_module(f"{PACKAGE}.api.images.get_image")
    delete_image = importlib.import_module(f"{PACKAGE}.api.images.delete_image")
    client = generated.Client(base_url=api.base_url, timeout=60)
    images = natural_images()

    accepted = index_image.sync_detailed(collection, client=client, body=models.IndexForm(
        image=types.File(payload=images["moon"], file_name="moon.jpg", mime_type="image/jpeg"), id=ODD_ID,
        metadata='{"source": "generated"}'), idempotency_key="generated-1")
    assert accepted.status_code == 202, accepted.content
    assert accepted.headers["Location"] == accepted.parsed.status_url
    assert accepted.parsed.image_id == ODD_ID
    indexed = finished(generated, client, accepted.parsed.task_id)
    assert isinstance(indexed, models.IndexTask) and indexed.state.value == "succeeded"
    assert isinstance(indexed.result, models.IndexResult)
    assert indexed.result.image_id == ODD_ID and indexed.result.replaced is False and indexed.result.write_token

    stored = get_image.sync(collection, ODD_ID, client=client)
    assert isinstance(stored, models.Image) and stored.id == ODD_ID
    assert stored.metadata.to_dict() == {"source": "generated"}

    asked = query_image.sync(collection, client=client, body=models.QueryForm(
        image=types.File(payload=images["moon"], file_name="q.jpg", mime_type="image/jpeg"), k=3,
        write_token=indexed.result.write_token))
    assert isinstance(asked, models.Accepted)
    answered = finished(generated, client, asked.task_id)
    assert isinstance(answered, models.QueryTask) and isinstance(answered.result, models.QueryResult)
    [match] = answered.result.matches
    assert isinstance(match, models.Match) and match.id == ODD_ID and match.score == pytest.approx(1.0, abs=1e-5)

    deleted = delete_image.sync(collection, ODD_ID, client=client)
    assert isinstance(deleted, models.Deleted) and deleted.deleted is True and deleted.id == ODD_ID
    gone = get_image.sync_detailed(collection, ODD_ID, client=client)
    assert gone.status_code == 404 and gone.parsed.error.code == "image_not_found"
