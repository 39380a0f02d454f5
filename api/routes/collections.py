"""Collections: their settings, listing them and their images, dropping one, and the placement of a sharded
collection's buckets on search groups (moving one)."""

from flask import Blueprint, jsonify, request

from api.auth import may_see_collection
from api.openapi import (
    BucketMove,
    BucketPlacement,
    CollectionDropped,
    CollectionInfo,
    CollectionList,
    CollectionSettings,
    CollectionSettingsAnswer,
    ImageIds,
    PageQuery,
    responses,
    spec,
)
from api.routes.common import _context, _json_body
from shared.collection_settings import validate_collection_settings
from shared.errors import LookalikeError
from shared.inputs import parse_bounded_int, validate_collection_name
from shared.search_groups import bucket_groups

blueprint = Blueprint("collections", __name__)


@blueprint.put("/v1/collections/<collection>")
@spec.validate(json=CollectionSettings, resp=responses({"HTTP_200": CollectionSettingsAnswer}, 400, 409, 413),
               tags=["collections"], skip_validation=True)
def put_collection(collection: str):
    """Set a collection's settings: ``match_threshold`` for near-duplicates, ``pdq_max_distance``, ``kind``
    (block or allow), ``whitening`` (search in a PCA-whitened space learned from the collection) and ``group``
    (the search group holding it; null: chosen by a hash of its name)."""
    collection = validate_collection_name(collection)
    settings = validate_collection_settings(_json_body("invalid_collection_settings"),
                                            _context()["settings"].search_groups)
    buckets = _context()["store"].put_collection_settings(collection, settings)
    return jsonify({"collection": collection, "settings": settings | {"buckets": buckets}})


@blueprint.get("/v1/collections")
@spec.validate(resp=responses({"HTTP_200": CollectionList}), tags=["collections"], skip_validation=True)
def list_collections():
    """The collections the caller's key may use, by name."""
    names = [name for name in _context()["store"].list_collections() if may_see_collection(name)]
    return jsonify({"collections": names})


@blueprint.get("/v1/collections/<collection>/images")
@spec.validate(query=PageQuery, resp=responses({"HTTP_200": ImageIds}, 400), tags=["collections"],
               skip_validation=True)
def list_images(collection: str):
    """A page of a collection's image ids (``?cursor=`` from the last page; ``next_cursor`` null at the end)."""
    collection = validate_collection_name(collection)
    cursor = parse_bounded_int(request.args.get("cursor"), default=0, low=0, high=2**63 - 1, code="invalid_cursor",
                               name="cursor", max_digits=19)
    limit = parse_bounded_int(request.args.get("limit"), default=1000, low=1, high=10_000, code="invalid_limit",
                              name="limit")
    next_cursor, ids = _context()["store"].list_image_ids(collection, cursor, limit)
    return jsonify({"collection": collection, "ids": ids, "next_cursor": next_cursor or None})


@blueprint.delete("/v1/collections/<collection>")
@spec.validate(resp=responses({"HTTP_200": CollectionDropped}, 400, 404), tags=["collections"], skip_validation=True)
def drop_collection(collection: str):
    """Delete a whole collection: images, vectors, hashes, thumbnails and settings (scope ``admin``).

    How a collection changes descriptor: vectors of different descriptors never mix, so it
    is emptied and indexed again.
    """
    store = _context()["store"]
    collection = validate_collection_name(collection)
    if store.collection_info(collection) is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    return jsonify({"collection": collection, "deleted": True, "images": store.drop_collection(collection)})


@blueprint.get("/v1/collections/<collection>")
@spec.validate(resp=responses({"HTTP_200": CollectionInfo}, 400, 404), tags=["collections"], skip_validation=True)
def get_collection(collection: str):
    info = _context()["store"].collection_info(validate_collection_name(collection))
    if info is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    return jsonify(info)


@blueprint.get("/v1/collections/<collection>/buckets")
@spec.validate(resp=responses({"HTTP_200": BucketPlacement}, 400, 404), tags=["collections"], skip_validation=True)
def get_buckets(collection: str):
    """Which search group holds each of the collection's buckets, and the buckets moving (scope ``admin``)."""
    return jsonify(_placement(validate_collection_name(collection)))


@blueprint.put("/v1/collections/<collection>/buckets/<bucket>")
@spec.validate(json=BucketMove, resp=responses({"HTTP_202": BucketPlacement}, 400, 404, 409), tags=["collections"],
               skip_validation=True)
def move_bucket(collection: str, bucket: str):
    """Move one bucket of a collection to another search group (scope ``admin``): the group loads it, then
    queries go there, then the old group lets go; no query fails or comes back short meanwhile. Moving it
    back, or elsewhere, while it moves starts the move over."""
    store, groups = _context()["store"], _context()["settings"].search_groups
    collection = validate_collection_name(collection)
    body = _json_body("invalid_bucket_move")
    if not isinstance(body, dict) or set(body) != {"group"} or body["group"] not in groups:
        raise LookalikeError("invalid_bucket_move", f"Send {{\"group\": ...}} naming one of the search groups "
                             f"{list(groups)}.", {"groups": list(groups)})
    current = _placement(collection)
    number = int(bucket) if bucket.isascii() and bucket.isdigit() and len(bucket) <= 5 else -1
    if current["buckets"] == 1:
        raise LookalikeError("collection_not_sharded", "A collection of one bucket is placed by its group setting "
                             "(PUT /v1/collections/{collection}).", {"collection": collection})
    if not 0 <= number < current["buckets"]:
        raise LookalikeError("bucket_not_found", "No such bucket: they are numbered from 0.",
                             {"buckets": current["buckets"], "bucket": bucket[:10]})
    if number in current["placement"].get(body["group"], []) and str(number) not in current["moving"]:
        return jsonify(current), 202  # there already
    store.start_move(collection, number, body["group"])
    return jsonify(_placement(collection)), 202


def _placement(collection: str) -> dict:
    store = _context()["store"]
    info = store.collection_info(collection)
    if info is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    buckets = info["settings"]["buckets"]
    placement = bucket_groups(collection, info["settings"], buckets, _context()["settings"].search_groups,
                              store.placement_overrides(collection))
    return {"collection": collection, "buckets": buckets, "placement": placement,
            "moving": {str(bucket): group for bucket, group in sorted(store.moves(collection).items())}}
