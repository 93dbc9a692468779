"""Synthetic radiotherapy plans from a real dose engine: pyRadPlan (photon SVD pencil beam + fluence
optimisation), run in its own virtual environment (``setup_engine_env.sh``) by ``engine.compute_dose``
through files and a subprocess (``pyradplan_worker.py``), because its pins (pydantic < 2.14,
numpy < 2.4) clash with the main environment."""
