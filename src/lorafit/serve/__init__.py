"""`lorafit serve`: finished runs behind one HTTP API; adapters over one base share its weights.

registry.py names and loads the runs (over infer/pool.py, which shares their frozen base tensors),
batcher.py gathers concurrent texts into batches in a worker thread, app.py is the FastAPI app
(`create_app`), main.py the command, settings.py its options. From Python:
`serve(ServeSettings(runs=["RUN_DIR"], port=8000))`."""
from ..lazy import exports

__getattr__, __all__ = exports(__name__, {'serve': '.main', 'ServeSettings': '.settings'})
