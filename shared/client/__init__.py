"""The ``kiln`` command's client side: ``kiln run``, ``kiln predictions``, ``kiln batch``, ``kiln webhooks``.

It speaks only HTTP to a Kiln API (httpx) and imports nothing else of Kiln, so a user's machine needs
no Redis, S3 or torch: ``config`` finds the URL and token, ``http`` is the API's client (errors as
``ClientError``), ``sse`` reads a prediction's event stream, ``display`` draws progress with rich,
and ``predictions``, ``batches`` and ``webhooks`` are the commands, wired up by ``commands``.
"""
