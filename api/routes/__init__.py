"""HTTP API v1 routes, one module per resource, each with a blueprint of its own. docs/api.md describes
them for callers.

- ``images``: indexing (one image, a batch), precomputed vectors, banked hashes; an image, its thumbnail; deleting it
- ``queries``: queries and checks
- ``collections``: collection settings, listings, dropping, bucket placement
- ``tasks``: tasks and batches
- ``web``: the web page
- ``health``: liveness, readiness, metrics
- ``common``: what several of them share (body limits, the JSON body, enqueueing, waiting on a task)

Endpoints are named ``<blueprint>.<view>`` (``images.index_image``): api/auth.py gives each its scope, and
the OpenAPI operation ids are the views' names (api/openapi.py).
"""

from flask import Flask

from api.routes import images, queries, collections, tasks, web, health  # noqa: I001 - in the order of BLUEPRINTS

# Registered in this order: the OpenAPI document lists its tags (and paths) in the order of their routes.
BLUEPRINTS = (images.blueprint, queries.blueprint, collections.blueprint, tasks.blueprint, web.blueprint,
              health.blueprint)


def register_routes(app: Flask) -> None:
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
