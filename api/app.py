"""The Flask application factory."""

from flask import Flask

from api.auth import register_auth
from api.errors import register_error_handlers
from api.limits import register_rate_limits
from api.routes import blueprint
from shared.queue import make_celery
from shared.settings import Settings, get_settings
from shared.store import Store


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    # The default for routes that set no limit of their own (upload routes set theirs).
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    app.extensions["lookalike"] = {
        "settings": settings,
        "store": Store.from_settings(settings),
        "celery": make_celery(settings),
    }
    app.register_blueprint(blueprint)
    register_auth(app)  # before the rate limits: a request without a valid key never counts
    register_rate_limits(app, settings)
    register_error_handlers(app)
    return app
