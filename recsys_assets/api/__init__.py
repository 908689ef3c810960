"""The HTTP service: recommendations from the Triton ensemble, click events and the real-time click path.

``app`` (FastAPI wiring) imports FastAPI; ``config``, ``events``, ``stream``, ``clicks``, ``online``, ``triton``
and ``landing`` hold the request logic and import no web framework, so they are unit-tested directly and the
lander (``recsys_assets.defs.events``) shares the stream code. Start it with ``python -m recsys_assets.api``.
"""
