"""The node's web page and REST API (``spinenode serve --http-port PORT``): FastAPI served by uvicorn in a
thread of the node's process, on the node's loaded models and audit database."""

from dicom_node.http.app import build_app
from dicom_node.http.server import HttpServer

__all__ = ["HttpServer", "build_app"]
