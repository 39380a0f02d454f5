"""Worker roles routed by collection: an embed worker computes vectors and passes each query or check on to the
search group holding its collection; search workers never load TensorFlow and hold only their groups' replicas."""

import io
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.settings import Settings
from shared.store import Store
from tests.conftest import database_url, emptied_afterwards, finished_task, natural_images, split_roles

GROUPS = ("g1", "g2")


@pytest.fixture(scope="module")
def roles(redis_server, service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("roles")
    with emptied_afterwards(database_url(redis_server, 8)) as url:
        env = service_env | {"LOOKALIKE_REDIS_URL": url, "LOOKALIKE_SEARCH_GROUPS": ",".join(GROUPS)}
        settings = Settings(redis_url=url, auth=False, rate_limit="", search_groups=GROUPS)
        store = Store.from_settings(settings)
        with split_roles(env, folder, store, GROUPS) as (processes, ports):
            yield create_app(settings).test_client(), store, processes, ports


def finished(store: Store, task_id: str, timeout: float = 120) -> dict:
    record = finished_task(store, task_id, timeout)
    assert record["state"] == "succeeded", record
    return record


def submit(client, path: str, image: bytes, **form) -> str:
    response = client.post(path, data={"image": (io.BytesIO(image), "a.jpg"), **form})
    assert response.status_code == 202, response.json
    return response.json["task_id"]


def replica_collections(port: int) -> set[str]:
    page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {sample.labels["collection"] for family in text_string_to_metric_families(page)
            for sample in family.samples if sample.name == "lookalike_replica_vectors"}


def test_queries_and_checks_go_to_the_group_holding_each_collection(roles):
    client, store, processes, ports = roles
    photos = natural_images()
    for collection, group, kind in (("alpha", "g1", "block"), ("beta", "g2", "allow")):
        assert client.put(f"/v1/collections/{collection}", json={"group": group, "kind": kind}).status_code == 200
        for name in ("moon", "rocket", "coins"):
            finished(store, submit(client, f"/v1/collections/{collection}/images", photos[name], id=name))

    for collection in ("alpha", "beta"):
        result = finished(store, submit(client, f"/v1/collections/{collection}/queries", photos["rocket"], k="3"))
        assert result["result"]["matches"][0]["id"] == "rocket" and result["result"]["group"] in GROUPS
        assert result["attempts"] == 2  # computed by the embed worker, ranked by the search group: two stages
    # A check of the block list in g1, overridden by the allow list in g2: one hop more.
    check = finished(store, submit(client, "/v1/collections/alpha/checks", photos["moon"],
                                   allow_collections='["beta"]'))["result"]
    assert check["verdict"] == "allow" and check["best_match"]["id"] == "moon"
    assert check["allow_match"]["collection"] == "beta" and check["allow_match"]["id"] == "moon"

    # Each search process holds its groups' collections only; the embed worker holds none.
    assert replica_collections(ports["g1"]) == {"alpha"} and replica_collections(ports["g2"]) == {"beta"}
    assert "Task lookalike.search[" not in processes["embed"].output()
    # Search processes never load TensorFlow; the embed worker does.
    maps = {role: Path(f"/proc/{process.process.pid}/maps").read_text() for role, process in processes.items()}
    assert "libtensorflow" in maps["embed"]
    assert "libtensorflow" not in maps["g1"] and "libtensorflow" not in maps["g2"]


def test_a_group_setting_must_name_a_group(roles):
    client, *_ = roles
    refused = client.put("/v1/collections/gamma", json={"group": "g9"})
    assert refused.status_code == 400 and refused.json["error"]["code"] == "invalid_collection_settings"
