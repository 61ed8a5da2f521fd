"""The REST API and Prometheus ``/metrics`` of the sender and the receiver (``sender.rest``, ``receiver.rest``).

uvicorn serves a FastAPI app from one daemon thread of the process (``server.py``), with an asyncio loop of its
own. The process's loop never waits on it: every half second or so it publishes an immutable snapshot of its
state (``snapshot.py``: a new dict assigned to an attribute), which is all the routes (``app.py``) and the
metrics collector (``metrics.py``) read; control goes through thread-safe calls (the stop flag). ``guard.py``
checks the bearer token and the body size before any route. Importing this package pulls in nothing heavy:
fastapi, uvicorn and prometheus-client are imported by ``server.py`` only, when a process starts its API.
"""
