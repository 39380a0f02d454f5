"""The web page (``/``): pick a collection, drop an image, see the ranked matches. Open without a key; what it
shows comes from API calls made with the key typed into it."""

from pathlib import Path

from flask import Blueprint
from flask import Response as FlaskResponse
from spectree import Response

from api.openapi import spec

blueprint = Blueprint("web", __name__)


@blueprint.get("/")
@spec.validate(resp=Response(HTTP_200=None), tags=["web"], security={}, skip_validation=True)
def home():
    """The web page: pick a collection, drop an image, see the ranked matches."""
    # Read, not streamed with send_from_directory: spectree's wrapper reads the body.
    return FlaskResponse((Path(__file__).parent.parent / "static" / "index.html").read_bytes(), mimetype="text/html")
