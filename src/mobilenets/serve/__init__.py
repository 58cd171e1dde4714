"""``mobilenets serve``: one model behind an HTTP API and a web page (the ``serve`` extra).

:func:`load_served` loads a checkpoint, an exported artifact or published weights;
:func:`build_app` makes the ASGI app (FastAPI) that ``mobilenets serve`` runs with uvicorn.
Nothing here imports FastAPI, Starlette or uvicorn until an app is built.
"""

from .app import ServeOptions, build_app
from .model import ServedModel, load_served

__all__ = ["ServeOptions", "ServedModel", "build_app", "load_served"]
