"""The OpenAPI document matches the code: every route is in it, its examples validate, and a
schemathesis fuzz of the real Flask app against it finds no 500 and no undocumented answer."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.openapi import UNDOCUMENTED
from shared.settings import Settings

FUZZ_EXAMPLES = 50  # per operation: about 800 requests, about ten seconds


@pytest.fixture(scope="module")
def fuzz_db(redis_server):
    """A Redis database of its own, which no worker consumes: fuzzed tasks only pile up there."""
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="module")
def app(fuzz_db):
    return create_app(Settings(redis_url=fuzz_db, auth=False, rate_limit="", max_upload_bytes=100_000,
                               callback_allowlist="hooks.example.com", webhook_secret="s"))


@pytest.fixture(scope="module")
def document(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.json


def test_every_route_is_documented(app, document):
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED:
            continue
        path = rule.rule.replace("<path:", "{").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, path) in documented, f"{method} {rule.rule} ({rule.endpoint}) is not in /openapi.json"


def test_examples_validate_against_their_schemas(document):
    schemas = document["components"]["schemas"]
    checked = 0
    for name, schema in schemas.items():
        for example in schema.get("examples", []):
            wrapper = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
            jsonschema.Draft202012Validator(wrapper).validate(example)
            checked += 1
    assert checked >= 6
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        jsonschema.Draft202012Validator({"$ref": "#/components/schemas/CollectionSettings",
                                         "components": document["components"]}).validate({"kind": "maybe"})


def test_docs_page_is_served_without_a_network(app):
    client = app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and b"/openapi.json" in page.data
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b'"5.' in bundle.data  # Swagger UI 5: it reads OpenAPI 3.1


def operations(app):
    return [result.ok() for result in schemathesis.openapi.from_wsgi("/openapi.json", app).get_all_operations()]


def test_fuzzed_requests_get_documented_answers(app, document):
    """Hypothesis drives each operation through its strategy (schemathesis' pytest plugin and pytest 9 do
    not get along, so the operations are walked here)."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    fuzzed = []
    for operation in operations(app):
        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, phases=[Phase.explicit, Phase.generate],
                  derandomize=True)  # the same examples on every run: CI stays deterministic
        def call(case):
            # /readyz?workers=1 answers a documented 503 here (no worker runs on this database); nothing else may 5xx.
            expected = checks[1:] if case.path == "/readyz" else checks
            case.call_and_validate(checks=expected)

        call()
        fuzzed.append(operation.label)
    assert len(fuzzed) == sum(len(operations) for operations in document["paths"].values())


def test_a_form_part_without_a_name_is_a_clear_400(app):
    """Found by the fuzzer: a part named "" (Werkzeug keys it None) made the image_missing answer a 500."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name=""\r\n\r\n1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--{boundary}--\r\n')
    response = app.test_client().post("/v1/collections/photos/queries", data=body.encode(),
                                      content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400 and response.json["error"]["code"] == "image_missing"
    assert response.json["error"]["details"]["received_fields"] == ["k"]


def test_the_committed_document_is_the_one_served(document):
    """docs/openapi.json is what client generators read: it must not drift from the code."""
    committed = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
    assert committed == document, "docs/openapi.json is stale: run `make spec` (python -m api.openapi) and commit it"


def test_the_document_is_made_for_generators(document):
    """Unique, plain component names; operation ids that read as function names; each task kind's result
    typed; the headers callers read or send declared."""
    schemas = document["components"]["schemas"]
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", name) for name in schemas), sorted(schemas)
    titles = [schema.get("title") for schema in schemas.values() if schema.get("title")]
    assert len(titles) == len(set(titles)), sorted(titles)
    operations = {(method, path): operation for path, methods in document["paths"].items()
                  for method, operation in methods.items()}
    ids = [operation["operationId"] for operation in operations.values()]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in ids), ids
    assert operations[("get", "/v1/tasks/{task_id}")]["operationId"] == "get_task"

    task = operations[("get", "/v1/tasks/{task_id}")]["responses"]["200"]["content"]["application/json"]["schema"]
    union = schemas[task["$ref"].rsplit("/", 1)[-1]]
    assert union["discriminator"]["propertyName"] == "kind"
    assert {ref.rsplit("/", 1)[-1] for ref in union["discriminator"]["mapping"].values()} == {
        "IndexTask", "QueryTask", "CheckTask"}
    for kind, result in (("IndexTask", "IndexResult"), ("QueryTask", "QueryResult"), ("CheckTask", "CheckResult")):
        refs = json.dumps(schemas[kind]["properties"]["result"])
        assert f"#/components/schemas/{result}" in refs, (kind, refs)
    assert schemas["QueryResult"]["properties"]["matches"]["items"] == {"$ref": "#/components/schemas/Match"}

    for (method, path), operation in operations.items():
        headers = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "header"}
        assert ("Idempotency-Key" in headers) == (method == "post"), (method, path)
        for status, response in operation["responses"].items():
            declared = set(response.get("headers", {}))
            if status == "202":
                assert "Location" in declared, (method, path)
            if status in ("429", "503"):
                assert "Retry-After" in declared, (method, path, status)


def test_api_errors_carry_the_declared_headers(app):
    """A 405 names the allowed methods; a 503 says when to come back (here: Redis is not reachable)."""
    client = app.test_client()
    refused = client.put("/v1/collections/c1/images")
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    unreachable = create_app(Settings(redis_url="redis://127.0.0.1:1/0", auth=False, rate_limit="")).test_client()
    down = unreachable.get("/v1/collections/c1")
    assert down.status_code == 503 and down.json["error"]["code"] == "store_unavailable"
    assert down.headers["Retry-After"] == "5"


@pytest.mark.parametrize("body", [
    {}, {"match_threshold": 1}, {"match_threshold": -1.0, "kind": "allow"}, {"pdq_max_distance": 0}, {"buckets": 8},
    {"match_threshold": 1.5}, {"match_threshold": True}, {"match_threshold": "0.9"}, {"pdq_max_distance": 3.5},
    {"pdq_max_distance": 257}, {"kind": "maybe"}, {"whitening": 1}, {"buckets": "8"}, {"buckets": 0},
    {"threshold": 0.9}, [0.9],
])
def test_collection_settings_are_refused_exactly_when_the_document_says_so(app, document, body):
    """One model checks PUT bodies and is the document's schema (shared/collection_settings.py): what the schema
    accepts the API accepts, what it refuses the API refuses with invalid_collection_settings."""
    schema = {"$ref": "#/components/schemas/CollectionSettings", "components": document["components"]}
    valid = jsonschema.Draft202012Validator(schema).is_valid(body)
    answer = app.test_client().put("/v1/collections/agree", json=body)
    if valid:
        assert answer.status_code == 200, (body, answer.json)
    else:
        assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_collection_settings", body
    app.test_client().delete("/v1/collections/agree")


def test_each_form_field_is_documented_and_read_in_one_place():
    """The form models are both the document's schemas and what the routes read forms through: every text field
    declares its reader, and the routes read no form field any other way."""
    import inspect

    from api.openapi import BatchForm, CheckForm, IndexForm, QueryForm, ReadWith
    from api.routes import images, queries

    for form in (IndexForm, BatchForm, QueryForm, CheckForm):
        for name, field in form.model_fields.items():
            readers = [item for item in field.metadata if isinstance(item, ReadWith)]
            assert len(readers) == (0 if name == "image" else 1), (form.__name__, name)
    for module, forms in ((queries, 2), (images, 2)):
        source = inspect.getsource(module)
        assert source.count("request.form") == forms and "request.form.get" not in source, module.__name__
