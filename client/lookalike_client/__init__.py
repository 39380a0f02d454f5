"""Lookalike's Python client and the ``lookalike`` command: a distribution of its own (lookalike-client).

    from lookalike_client import Client
    lookalike = Client("http://127.0.0.1:8000", api_key="lk_...")

It needs only ``requests`` (and ``click`` and ``tqdm`` for the command line); it imports nothing
of the server.
"""

from importlib.metadata import PackageNotFoundError, version

from lookalike_client.client import ApiError, Client, Submitted, TaskFailed

try:
    __version__ = version("lookalike-client")
except PackageNotFoundError:  # imported from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["ApiError", "Client", "Submitted", "TaskFailed", "__version__"]
