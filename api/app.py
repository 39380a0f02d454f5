"""The Flask application factory."""

from flask import Flask

from api.errors import register_error_handlers
from api.routes import blueprint
from shared.queue import make_celery
from shared.settings import Settings, get_settings
from shared.store import Store

# Room for the multipart envelope and the form fields around the image itself.
FORM_OVERHEAD_BYTES = 256 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + settings.max_metadata_bytes + FORM_OVERHEAD_BYTES
    app.json.sort_keys = False
    app.extensions["lookalike"] = {
        "settings": settings,
        "store": Store.from_settings(settings),
        "celery": make_celery(settings),
    }
    app.register_blueprint(blueprint)
    register_error_handlers(app)
    return app
