"""The OpenAPI 3 description of the API, generated from the routes with spectree.

Each route in api/routes.py is decorated with ``spec.validate(...)`` naming its request
form or JSON body and its responses, with ``skip_validation=True``: the routes validate
with their own rules and error codes (shared/schemas.py), and these models describe them.
tests/test_openapi.py checks that every route is documented, that the examples here
validate against their schemas, and fuzzes the API with schemathesis against the
document (no 500s; each status, content type and body as documented).

Served at ``/openapi.json``, with Swagger UI at ``/docs`` from the swagger-ui-bundle
package (no CDN: it works offline).
"""

from pathlib import Path
from typing import Any, Literal

from flask import Flask, Response as FlaskResponse, jsonify, send_from_directory
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.model_adapter.pydantic_adapter import BaseFile
from swagger_ui_bundle import swagger_ui_path

def _example(example: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


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


class IndexForm(BaseModel):
    model_config = _example({"id": "uploads/2026/cat.jpg", "metadata": '{"tenant": "42"}'})
    image: BaseFile | None = Field(None, description="The image (JPEG, PNG, WebP, BMP, TIFF); or give `url`.")
    url: str | None = Field(None, description="An image URL on the fetch allow list, for the worker to fetch.")
    id: str | None = Field(None, description="Your id for the image; default: a new one.")
    metadata: str | None = Field(None, description="A JSON object, returned with matches.")
    callback_url: str | None = Field(None, description="Where to POST the finished task (webhook).")


class BatchForm(BaseModel):
    image: list[BaseFile] = Field(description="The images, one file field each.")
    ids: str | None = Field(None, description="A JSON array of ids, one per image.")
    metadata: str | None = Field(None, description="A JSON array of metadata objects, one per image.")
    callback_url: str | None = None


class QueryForm(BaseModel):
    model_config = _example({"k": 5, "min_score": 0.5, "filter": '{"tenant": "42"}', "signals": "cnn"})
    image: BaseFile | None = Field(None, description="The query image; or `url`, or `vector`.")
    url: str | None = None
    vector: str | None = Field(None, description="A JSON array of 512 numbers, or base64 of 512 float32.")
    k: int | None = Field(None, description="Matches wanted, 1-1000 (default 10).")
    min_score: float | None = Field(None, description="Only CNN scores of at least this, -1 to 1.")
    filter: str | None = Field(None, description="A JSON object of metadata fields that must be equal.")
    signals: Signals | None = Field(None, description="What decides a match (default cnn).")
    expand: int | None = Field(None, description="Query expansion: average the query with this many of its best "
                               "CNN matches and search again, 0-10 (default 0).")
    callback_url: str | None = None
    write_token: str | None = Field(None, description="What index and vectors answers give (`write_token`): the "
                                    "query sees those writes, whatever staleness a sharded collection allows.")
    partial: bool | None = Field(None, description="A collection whose buckets several search groups hold: answer "
                                 "from the groups that answered in time, naming the buckets missing (default false: "
                                 "fail `search_unavailable`).")


class CheckForm(BaseModel):
    model_config = _example({"signals": "both", "allow_collections": '["known-good"]'})
    image: BaseFile | None = None
    url: str | None = None
    vector: str | None = None
    filter: str | None = None
    signals: Signals | None = Field(None, description="What decides a match (default both).")
    allow_collections: str | None = Field(None, description="A JSON array of allow-list collections.")
    callback_url: str | None = None
    write_token: str | None = Field(None, description="What index and vectors answers give (`write_token`): the "
                                    "query sees those writes, whatever staleness a sharded collection allows.")
    partial: bool | None = Field(None, description="A collection whose buckets several search groups hold: answer "
                                 "from the groups that answered in time, naming the buckets missing (default false: "
                                 "fail `search_unavailable`).")


class CollectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block", "whitening": False, "group": None}]})
    match_threshold: float = Field(0.9, ge=-1, le=1)
    pdq_max_distance: int = Field(31, ge=0, le=256)
    kind: Literal["block", "allow"] = "block"
    whitening: bool = Field(False, description="Search in a PCA-whitened space learned from the collection's own "
                            "vectors (once it holds enough; re-learned as it grows). Changes what scores mean: "
                            "calibrate `match_threshold` again.")
    group: str | None = Field(None, description="The search group holding the collection (one of "
                              "`LOOKALIKE_SEARCH_GROUPS`); null: chosen by a stable hash of its name.")
    buckets: int = Field(1, ge=1, le=1024, description="How many buckets the collection's images are spread "
                         "over (by a hash of their id), each in a Redis Cluster slot of its own. Fixed when the "
                         "collection is first written: another count is `409 buckets_fixed`. Left out of a PUT: "
                         "the collection keeps its count.")


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


class Task(BaseModel):
    model_config = _example({"task_id": "5f0c", "kind": "check", "state": "succeeded",
                             "result": {"verdict": "block", "near_duplicate": True}, "error": None,
                             "submitted_at": "2026-11-27T01:00:00.000Z", "started_at": "2026-11-27T01:00:00.010Z",
                             "finished_at": "2026-11-27T01:00:00.170Z", "collection": "banned"})
    task_id: str
    kind: Literal["index", "query", "check"]
    state: Literal["queued", "running", "succeeded", "failed"]
    result: dict[str, Any] | None
    error: ErrorBody | None
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    collection: str | None = None
    image_id: str | None = None
    url: str | None = None
    k: int | None = None
    min_score: float | None = None
    filter: dict[str, Any] | None = None
    signals: list[str] | None = None
    expand: int | None = None
    allow_collections: list[str] | None = None
    request_id: str | None = None
    callback: dict[str, Any] | None = None


class CollectionInfo(BaseModel):
    collection: str
    images: int
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


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    redis: str
    weights: list[str]
    workers: list[dict[str, Any]]
    warning: str | None = None


# --- Serving the document -------------------------------------------------------------------

# Routes that are not part of the API itself and so not in the document.
UNDOCUMENTED = {"openapi_json", "openapi_docs", "openapi_assets", "static"}


def register_openapi(app: Flask) -> None:
    spec.app = app  # the document is generated from this app's routes (no routes of spectree's own)
    spec.backend.app = app

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(spec.spec)

    @app.get("/docs")
    def openapi_docs():
        page = (Path(swagger_ui_path) / "index.html").read_text()
        page = page.replace('href="./', 'href="/docs/assets/').replace('src="./', 'src="/docs/assets/')
        page = page.replace('href="index.css"', 'href="/docs/assets/index.css"')
        page = page.replace('<script src="/docs/assets/swagger-initializer.js" charset="UTF-8"> </script>',
                            '<script>window.onload = () => { window.ui = SwaggerUIBundle({url: "/openapi.json", '
                            'dom_id: "#swagger-ui", presets: [SwaggerUIBundle.presets.apis, '
                            'SwaggerUIStandalonePreset], layout: "StandaloneLayout"}); };</script>')
        return FlaskResponse(page, mimetype="text/html")

    @app.get("/docs/assets/<path:name>")
    def openapi_assets(name: str):
        return send_from_directory(swagger_ui_path, name)
