"""The remote GPU worker: ``dosediffusion serve`` (:mod:`.server`, :mod:`.jobs`) and its client
(:mod:`.client`, used by ``predict --remote`` and the Slicer module), speaking :mod:`.wire`.

Importing this package imports neither FastAPI nor uvicorn (the client needs only httpx).
"""
