"""Serving the codec over HTTP and WebSocket (``meltok-rt serve``), with dynamic batching.

``app`` (the ASGI app), ``batcher`` (graph calls of concurrent requests and streams gathered into
batches of equal shapes), ``sessions`` (a stream with its settings), ``offline`` (the offline
endpoints' work), ``protocol`` (WebSocket messages, close codes, HTTP statuses), ``metrics``,
``server`` (uvicorn with a draining shutdown), ``client`` (Python clients), ``ray_serve`` (the same
app as a Ray Serve deployment). Needs the ``serve`` extra: ``pip install -e '.[serve]'``.
"""
