"""The OpenAPI 3 description of the API, generated from the routes with spectree.

Each route in api/routes/ is decorated with ``spec.validate(...)`` naming its request
form or JSON body and its responses, with ``skip_validation=True``: the routes validate
with their own rules and error codes (shared/inputs.py and the modules beside it), and
these models describe them.
tests/test_openapi.py checks that every route is documented, that the examples here
validate against their schemas, and fuzzes the API with schemathesis against the
document (no 500s; each status, content type and body as documented).

Served at ``/openapi.json``, with Swagger UI 5 at ``/docs`` from the swagger-ui-py
package's files (no CDN: it works offline). ``python -m api.openapi`` writes the committed
copy, docs/openapi.json, which client generators read; a test fails when it drifts.
"""

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal

from flask import Flask, Response as FlaskResponse, jsonify, send_from_directory
from pydantic import BaseModel, ConfigDict, Field, RootModel
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.model_adapter.pydantic_adapter import BaseFile

from shared.collection_settings import CollectionSettings  # validates PUT bodies and is documented here
from shared.inputs import (
    MAX_EXPAND,
    MAX_K,
    parse_bounded_int,
    parse_collection_list,
    parse_metadata,
    parse_min_score,
    parse_partial,
    validate_image_id,
)
from shared.matching import parse_filter, parse_signals
from shared.perceptual_hashes import parse_hash_bits, parse_hash_quality
from shared.write_tokens import parse_write_token

def _example(example: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


def _form(example: dict | None = None) -> ConfigDict:
    """A multipart form's model: each field a string or a file, or left out -- never null, which a form cannot
    send (with ``null`` as a default, Swagger UI's "Try it out" filled every field with the text "null")."""
    def without_nulls(schema: dict) -> None:
        for field in schema.get("properties", {}).values():
            if "default" in field and field["default"] is None:
                del field["default"]
            kinds = [kind for kind in field.pop("anyOf", []) if kind.get("type") != "null"]
            if len(kinds) == 1:
                field.update(kinds[0])
            elif kinds:
                field["anyOf"] = kinds
            if field.get("type") == "string" and "format" not in field and "enum" not in field:
                field.setdefault("example", "")  # (else Swagger UI fills in "string")
        if example is not None:
            schema["examples"] = [example]
    return ConfigDict(json_schema_extra=without_nulls)


# --- Errors --------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="Stable error code (docs/api.md lists them all).")
    message: str
    details: dict[str, Any]


class Error(BaseModel):
    model_config = _example({"error": {"code": "invalid_collection_name", "message": "Collection names are ...",
                                       "details": {"collection": "Bad Name"}}})
    error: ErrorBody


spec = SpecTree(
    "flask",
    title="Lookalike",
    version="v1",
    description="Image-similarity search: index images, ask which indexed images look like a new one, "
    "and whether an upload is a near-duplicate of a known one. Work that needs the model is asynchronous: "
    "submit, get a task, poll it (or take a webhook). docs/api.md has the prose.",
    annotations=False,
    naming_strategy=lambda model: model.__name__,  # plain component names (default: name + hash)
    nested_naming_strategy=lambda parent, child: child,  # one component per model, wherever it is used
    validation_error_status=400,  # any route may answer 400 bad_request: documented with our error shape
    validation_error_model=Error,
    security_schemes=[SecurityScheme(name="apiKey", data=SecuritySchemeData(
        type="http", scheme="bearer", description="An API key: lk_<key id>_<secret>"))],
    security={"apiKey": []},
)


def responses(success: dict[str, Any], *errors: int) -> Response:
    """A route's responses: its success model(s) and the error statuses it can answer, all as ``Error``."""
    common = (401, 403, 429, 503)
    return Response(**success, **{f"HTTP_{status}": Error for status in sorted({*errors, *common})})


# --- Requests ------------------------------------------------------------------------------

Signals = Literal["cnn", "pdq", "both"]


@dataclass(frozen=True)
class ReadWith:
    """How a route reads one field of its form: ``parse(raw, settings)`` checks the text as sent (None: left
    out) and raises the field's stable error code. Declared on the field of the form's model, so that a field
    is documented and checked in one place (``FormModel.read``)."""
    parse: Callable[[str | None, Any], Any]


AS_SENT = ReadWith(lambda raw, settings: raw)  # checked by the route with the fields it goes with


class FormModel(BaseModel):
    """A multipart form: its model documents it (OpenAPI) and reads it (``read``)."""

    @classmethod
    def read(cls, form, settings) -> dict[str, Any]:
        """Every text field of the form, each read by its own ``ReadWith`` in the order declared (files: by the
        route, from the request's files)."""
        values = {}
        for name, field in cls.model_fields.items():
            reader = next((item for item in field.metadata if isinstance(item, ReadWith)), None)
            if reader is not None:
                values[name] = reader.parse(form.get(name), settings)
        return values


def _signals_as_sent(raw: str | None, settings) -> str | None:
    """``signals`` checked (``invalid_signals``) and kept as sent: its default depends on the route and on what
    the query is (an image, a vector, a hash)."""
    if raw is not None:
        parse_signals(raw, "both")
    return raw or None


def _hash_bits(raw: str | None, settings) -> bytes | None:
    return None if raw is None else parse_hash_bits(raw)


def _hash_quality(raw: str | None, settings) -> int:
    return parse_hash_quality(raw)


class IndexForm(FormModel):
    model_config = _form({"id": "uploads/2026/cat.jpg", "metadata": '{"tenant": "42"}'})
    image: BaseFile | None = Field(None, description="The image (JPEG, PNG, WebP, BMP, TIFF); or give `url`.")
    url: Annotated[str | None, AS_SENT] = Field(None, description="An image URL on the fetch allow list, for the "
                                                "worker to fetch.")
    id: Annotated[str | None, ReadWith(lambda raw, settings: None if raw is None else validate_image_id(raw))] = Field(
        None, description="Your id for the image; default: a new one.")
    metadata: Annotated[str | None, ReadWith(lambda raw, settings: parse_metadata(raw, settings.max_metadata_bytes))] \
        = Field(None, description="A JSON object, returned with matches.")
    callback_url: Annotated[str | None, AS_SENT] = Field(None, description="Where to POST the finished task "
                                                         "(webhook).")


class BatchForm(FormModel):
    model_config = _form()
    image: list[BaseFile] = Field(description="The images, one file field each.")
    # (checked against the number of images, once the route has counted them: parse_aligned_array)
    ids: Annotated[str | None, AS_SENT] = Field(None, description="A JSON array of ids, one per image.")
    metadata: Annotated[str | None, AS_SENT] = Field(None, description="A JSON array of metadata objects, one per "
                                                     "image.")
    callback_url: Annotated[str | None, AS_SENT] = Field(None, description="Where to POST each finished task.")


class SearchForm(FormModel):
    """What queries and checks share: one of an image, a URL, a vector or a hash, and how to answer."""

    image: BaseFile | None = Field(None, description="The image; or `url`, or `vector`, or `hash`.")
    url: Annotated[str | None, AS_SENT] = Field(None, description="An image URL on the fetch allow list.")
    vector: Annotated[str | None, AS_SENT] = Field(None, description="A JSON array of 512 numbers, or base64 of 512 "
                                                   "float32 (the CNN alone).")
    hash: Annotated[str | None, ReadWith(_hash_bits)] = Field(None, description="A PDQ hash (64 hex digits, "
                                                              "Meta's format): PDQ alone.")
    hash_quality: Annotated[int | None, ReadWith(_hash_quality)] = Field(
        None, ge=0, le=100, description="The hash's quality, 0-100 (default 100).", json_schema_extra={"example": 100})
    filter: Annotated[str | None, ReadWith(lambda raw, settings: parse_filter(raw))] = Field(
        None, description="A JSON object of metadata fields that must be equal.")
    signals: Annotated[Signals | None, ReadWith(_signals_as_sent)] = Field(
        None, description="What finds and decides matches (default both; by `vector`, the CNN alone; by `hash`, PDQ).")
    callback_url: Annotated[str | None, AS_SENT] = Field(None, description="Where to POST the finished task.")
    write_token: Annotated[str | None, ReadWith(lambda raw, settings: parse_write_token(raw))] = Field(
        None, description="What index and vectors answers give (`write_token`): the answer sees those writes, "
        "whatever staleness a sharded collection allows.")
    partial: Annotated[bool | None, ReadWith(lambda raw, settings: parse_partial(raw))] = Field(
        None, description="A collection whose buckets several search groups hold: answer from the groups that "
        "answered in time, naming the buckets missing (default false: fail `search_unavailable`).",
        json_schema_extra={"example": False})


class QueryForm(SearchForm):
    model_config = _form({"k": 5, "min_score": 0.5, "filter": '{"tenant": "42"}', "signals": "cnn"})
    k: Annotated[int | None, ReadWith(lambda raw, settings: parse_bounded_int(
        raw, default=settings.default_k, low=1, high=MAX_K, code="invalid_k", name="k"))] = Field(
        None, ge=1, le=MAX_K, description=f"Matches wanted, 1-{MAX_K} (default 10).", json_schema_extra={"example": 10})
    min_score: Annotated[float | None, ReadWith(lambda raw, settings: parse_min_score(raw))] = Field(
        None, description="Only CNN scores of at least this, -1 to 1.", json_schema_extra={"example": -1})
    expand: Annotated[int | None, ReadWith(lambda raw, settings: parse_bounded_int(
        raw, default=0, low=0, high=MAX_EXPAND, code="invalid_expand", name="expand"))] = Field(
        None, ge=0, le=MAX_EXPAND, description="Query expansion: average the query with this many of its best CNN "
        f"matches and search again, 0-{MAX_EXPAND} (default 0).", json_schema_extra={"example": 0})


class CheckForm(SearchForm):
    model_config = _form({"signals": "both", "allow_collections": '["known-good"]'})
    allow_collections: Annotated[str | None, ReadWith(lambda raw, settings: parse_collection_list(
        raw, name="allow_collections"))] = Field(None, description="A JSON array of allow-list collections.")


class WhiteningSummary(BaseModel):
    learned_from: int = Field(description="Vectors in the random sample it was learned from.")
    collection_size: int = Field(description="Images the collection held then.")
    learned_at: str
    dimensions: int = Field(description="Components kept (those the sample varies along).")


class VectorItem(BaseModel):
    id: str
    vector: list[float] | str = Field(description="512 numbers, or base64 of 512 little-endian float32.")
    metadata: dict[str, Any] | None = None


class VectorsRequest(BaseModel):
    model_config = _example({"items": [{"id": "a/1.jpg", "vector": "AACAPw==", "metadata": {"tenant": "42"}}],
                             "model": "vgg16-notop-maxpool-224", "weights": "imagenet"})
    items: list[VectorItem]
    model: str | None = None
    weights: str | None = None


class HashItem(BaseModel):
    id: str
    hash: str = Field(description="A PDQ hash: 64 hex digits (Meta's and ThreatExchange's format).",
                      pattern="^[0-9a-fA-F]{64}$")
    quality: int | None = Field(None, ge=0, le=100, description="The hash's quality (default 100); below "
                                "LOOKALIKE_PDQ_MIN_QUALITY it is stored but never matched.")
    metadata: dict[str, Any] | None = None


class HashesRequest(BaseModel):
    model_config = _example({"items": [{"id": "ncmec/2291", "hash": "f8f8f0cce0f4e84d0e370a22028f67f0"
                                        "b36e2ed596623e1d33e6339c4e9c9b22", "quality": 100,
                                        "metadata": {"list": "ncmec"}}]})
    items: list[HashItem]


class WaitQuery(BaseModel):
    wait: int | None = Field(None, description="Seconds to hold the answer until the task finishes (0-30). When "
                             "the API already holds as many waiting polls as it allows (per process and per key), "
                             "answered at once with the task as it stands and Retry-After: 1.")


class PageQuery(BaseModel):
    cursor: int | None = Field(None, description="From the last page's next_cursor; 0 or none to start.")
    limit: int | None = Field(None, description="About how many ids per page, 1-10000 (default 1000).")


# --- Responses -----------------------------------------------------------------------------


class Accepted(BaseModel):
    model_config = _example({"task_id": "5f0c...", "image_id": "uploads/2026/cat.jpg",
                             "status_url": "/v1/tasks/5f0c..."})
    task_id: str
    status_url: str
    image_id: str | None = None


class BatchItem(BaseModel):
    image_id: str | None
    task_id: str | None
    error: ErrorBody | None = None


class BatchAccepted(BaseModel):
    batch_id: str
    status_url: str
    accepted: int
    rejected: int
    tasks: list[BatchItem]


class BatchItemState(BaseModel):
    image_id: str | None
    task_id: str | None
    state: str
    error: ErrorBody | None


class Batch(BaseModel):
    batch_id: str
    collection: str
    submitted_at: str
    total: int
    counts: dict[str, int]
    finished: bool
    items: list[BatchItemState]


class ModelLabels(BaseModel):
    model: str = Field(description="The descriptor of the vectors searched (model and pooling).")
    weights: str
    warning: str | None = Field(None, description="Set when the worker runs with random weights (tests only).")


class IndexResult(ModelLabels):
    collection: str
    image_id: str
    replaced: bool = Field(description="Whether the id held an image before (now replaced).")
    pdq_quality: int | None = Field(description="Quality of the image's PDQ hash, 0-100.")
    write_token: str = Field(description="Pass it as `write_token` to a query or check to see this write.")


class Match(BaseModel):
    id: str
    score: float | None = Field(description="Cosine similarity of the CNN vectors (null: the CNN was not used).")
    pdq_distance: int | None = Field(description="Hamming distance of the PDQ hashes (null: PDQ was not used).")
    near_duplicate: bool
    matched_by: list[Signals] = Field(description="The signals that found it near (empty: none did).")
    metadata: dict[str, Any]


class AllowMatch(Match):
    collection: str = Field(description="The allow collection holding the match.")


class PartialAnswer(BaseModel):
    groups_missing: list[str]
    buckets_missing: list[int]


class SearchResult(ModelLabels):
    """What queries and checks share: the settings applied and what the search used."""
    match_threshold: float
    pdq_max_distance: int
    kind: Literal["block", "allow"]
    whitening: bool
    group: str | None = None
    buckets: int = 1
    whitened: WhiteningSummary | None = Field(description="The whitening the scores were taken in, or null.")
    signals: list[Signals] = Field(description="The signals actually used.")
    pdq_hash: str | None = Field(description="The query's PDQ hash, 64 hex digits (null: none computed), for "
                                 "the caller's records or hash lists.")
    pdq_quality: int | None = Field(description="Quality of the query's PDQ hash (null: none computed).")
    partial: PartialAnswer | None = Field(None, description="Only with `partial=true`: the buckets left out.")


class QueryResult(SearchResult):
    matches: list[Match]
    verdict: Literal["block", "allow", "none"] | None = Field(description="What the best match means by the "
                                                              "collection's settings; null for a collection whose "
                                                              "settings were never set (PUT).")
    expand: int


class CheckResult(SearchResult):
    verdict: Literal["block", "allow", "none"] | None = Field(description="What the best match means by the "
                                                              "collection's settings; null for a collection whose "
                                                              "settings were never set (PUT).")
    near_duplicate: bool
    best_match: Match | None = Field(description="The collection's best match (null: the collection is empty).")
    allow_match: AllowMatch | None = Field(description="The allow collection's near-duplicate that made the "
                                           "verdict `allow`, or null.")


class TaskFields(BaseModel):
    task_id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    error: ErrorBody | None
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    collection: str | None = None
    url: str | None = None
    request_id: str | None = None
    callback: dict[str, Any] | None = None


class IndexTask(TaskFields):
    kind: Literal["index"]
    result: IndexResult | None
    image_id: str | None = None


class QueryTask(TaskFields):
    kind: Literal["query"]
    result: QueryResult | None
    k: int | None = None
    min_score: float | None = None
    filter: dict[str, Any] | None = None
    signals: list[Signals] | None = None
    expand: int | None = None


class CheckTask(TaskFields):
    kind: Literal["check"]
    result: CheckResult | None
    filter: dict[str, Any] | None = None
    signals: list[Signals] | None = None
    allow_collections: list[str] | None = None


class Task(RootModel[Annotated[IndexTask | QueryTask | CheckTask, Field(discriminator="kind")]]):
    """A task as it stands; ``kind`` says which result it carries."""
    model_config = _example({"task_id": "5f0c", "kind": "check", "state": "queued", "result": None, "error": None,
                             "submitted_at": "2026-11-27T01:00:00.000Z", "started_at": None, "finished_at": None,
                             "collection": "banned"})


class CollectionInfo(BaseModel):
    collection: str
    images: int = Field(description="Entries: indexed images, stored vectors and hashes banked alone.")
    configured: bool = Field(description="Whether settings were set (PUT): only then do matches get verdicts.")
    dimension: int | None
    model: str | None
    weights: str | None
    settings: CollectionSettings
    whitening: WhiteningSummary | None = Field(description="The whitening learned, used while `whitening` is on.")


class CollectionSettingsAnswer(BaseModel):
    collection: str
    settings: CollectionSettings


class BucketMove(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"group": "g2"}]})
    group: str = Field(description="The search group to hold the bucket (one of `LOOKALIKE_SEARCH_GROUPS`).")


class BucketPlacement(BaseModel):
    collection: str
    buckets: int
    placement: dict[str, list[int]] = Field(description="Each search group's buckets, where queries go now.")
    moving: dict[str, str] = Field(description="Buckets moving (by number) and the group each is moving to: "
                                   "committed once every live process of that group has loaded it.")


class CollectionDropped(BaseModel):
    collection: str
    deleted: bool
    images: int


class CollectionList(BaseModel):
    collections: list[str]


class ImageIds(BaseModel):
    collection: str
    ids: list[str]
    next_cursor: int | None


class PdqInfo(BaseModel):
    hash: str
    quality: int


class Image(BaseModel):
    id: str
    metadata: dict[str, Any]
    indexed_at: str
    pdq: PdqInfo | None = None


class Deleted(BaseModel):
    id: str
    deleted: bool
    write_token: str = Field(description="Pass it as `write_token` to a query or check to be sure it no longer "
                             "finds the image.")


class VectorsStored(BaseModel):
    collection: str
    stored: int
    replaced: int
    model: str
    weights: str
    write_token: str = Field(description="Pass it as `write_token` to a query or check to see these writes.")


class ReadyQuery(BaseModel):
    workers: bool | None = Field(None, description="true: ready only while a worker with its model loaded has "
                                 "reported in (the whole service); default: while this API process can answer.")


class HashesStored(BaseModel):
    collection: str
    stored: int
    replaced: int
    write_token: str = Field(description="Pass it as `write_token` to a query or check to see these writes.")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: Literal["ready", "degraded"] = Field(description="`degraded`: no worker has reported in; submitted "
                                                 "tasks wait in the queue.")
    redis: str
    weights: list[str]
    workers: list[dict[str, Any]]
    warning: str | None = None


# --- Serving the document -------------------------------------------------------------------

# Routes that are not part of the API itself and so not in the document.
UNDOCUMENTED = {"openapi_json", "openapi_docs", "openapi_assets", "static"}


# Headers the routes read or set that spectree cannot declare: added to the generated document.
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Any 1-255 printable ASCII characters: a repeat of the request with the same key "
                   "(within 24 hours, by the same API key) gets the first answer instead of doing the work again.",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
PREFER = {"name": "Prefer", "in": "header", "required": False,
          "description": "`wait=N` (RFC 7240): hold the answer up to N seconds (at most LOOKALIKE_MAX_WAIT_SECONDS) "
          "and answer 200 with the finished task when it finishes in time; else the usual 202.",
          "schema": {"type": "string"}, "example": "wait=10"}
RESPONSE_HEADERS = {
    "Preference-Applied": {"description": "`wait=N`: the answer waited for the task (RFC 7240).",
                           "schema": {"type": "string"}},
    "Content-Location": {"description": "Where the task returned here can be polled again.",
                         "schema": {"type": "string"}},
    "Location": {"description": "Where to poll the task (or batch) this request created.",
                 "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before asking again.", "schema": {"type": "integer"}},
    "Idempotent-Replayed": {"description": "`true` when this is the stored answer to an earlier request with the "
                            "same Idempotency-Key.", "schema": {"type": "string", "enum": ["true"]}},
}


@functools.cache
def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes: spectree's, with operation ids from the view functions' names
    (``index_image``, ``get_task``: what generated clients name their functions) and the headers above."""
    for endpoint, view in app.view_functions.items():
        view.operation_id = endpoint.rsplit(".", 1)[-1]  # read by spectree when it generates the document
    generated = copy.deepcopy(spec.spec)
    for operations in generated["paths"].values():
        for method, operation in operations.items():
            if method == "post":
                operation["parameters"] = [*operation.get("parameters", []), IDEMPOTENCY_KEY]
            if operation["operationId"] in ("query_image", "check_image"):
                operation["parameters"].append(PREFER)
            for status, response in operation["responses"].items():
                headers = {}
                if status == "202":
                    headers["Location"] = RESPONSE_HEADERS["Location"]
                if status in ("429", "503", "409") or (operation["operationId"] == "get_task" and status == "200"):
                    headers["Retry-After"] = RESPONSE_HEADERS["Retry-After"]
                if method == "post" and status.startswith("2"):
                    headers["Idempotent-Replayed"] = RESPONSE_HEADERS["Idempotent-Replayed"]
                if operation["operationId"] in ("query_image", "check_image") and status == "200":
                    headers["Preference-Applied"] = RESPONSE_HEADERS["Preference-Applied"]
                    headers["Content-Location"] = RESPONSE_HEADERS["Content-Location"]
                if headers:
                    response["headers"] = headers
    return generated


def register_openapi(app: Flask) -> None:
    spec.app = app  # the document is generated from this app's routes (no routes of spectree's own)
    spec.backend.app = app

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(document(app))

    @app.get("/docs")
    def openapi_docs():
        return FlaskResponse(DOCS_PAGE, mimetype="text/html")

    @app.get("/docs/assets/<path:name>")
    def openapi_assets(name: str):
        return send_from_directory(SWAGGER_UI_ASSETS, name, max_age=3600)


# Swagger UI 5 (it reads OpenAPI 3.1; version 4 cannot) from the swagger-ui-py package's files: no CDN.
SWAGGER_UI_ASSETS = str(importlib.resources.files("swagger_ui") / "static")
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>Lookalike API reference</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script>
    window.onload = () => {
      window.ui = SwaggerUIBundle({
        url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
        // A form field left blank is left out, as a browser's own form would: "Try it out" sends every field
        // of a multipart body, and an empty callback_url or vector is not the same request as none.
        requestInterceptor: (request) => {
          if (request.body instanceof FormData) {
            for (const [name, value] of [...request.body.entries()]) {
              if (value === "") request.body.delete(name);
            }
          }
          return request;
        },
      });
    };
  </script>
</body>
</html>
"""


def main() -> None:
    """``python -m api.openapi [PATH]``: write the document (default docs/openapi.json, the committed copy that
    tests/test_openapi.py compares with what the API serves; client generators read it)."""
    import json
    import sys

    # As the routes see this module (run as __main__, it would be a second copy with a spec of no routes).
    from api.openapi import document, register_openapi
    from api.routes import register_routes

    app = Flask(__name__)
    register_routes(app)
    register_openapi(app)
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json")
    with app.app_context():
        path.write_text(json.dumps(document(app), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
