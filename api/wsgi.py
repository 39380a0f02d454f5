"""The WSGI entry point for gunicorn: ``gunicorn --config python:api.gunicorn_conf api.wsgi:app``."""

from api.app import create_app

app = create_app()
