"""The node's web page and REST API (``spinenode serve --http-port PORT``): FastAPI served by uvicorn in a
thread of the node's process (``server``), on the node's loaded models and audit database; the HTTP
server's credentials (``passwords``, ``auth``) and STOW-RS intake (``stow``)."""
