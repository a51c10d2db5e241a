"""HTTP layer: ASGI apps and the process that serves them."""
