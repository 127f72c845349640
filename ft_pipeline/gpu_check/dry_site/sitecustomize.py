"""The dry run's stand-in for the GPU machine's missing packages: on PYTHONPATH in the dry run's processes only,
it hides every module listed in the file named by GPU_CHECK_ABSENT (bundle.absent_modules: what that machine
lacks), as if it were not installed: `import mlflow` fails, `importlib.util.find_spec("mlflow")` is None. Code
that needs one of them then fails here too, rather than only on the GPU machine."""

import os
import sys

if os.environ.get("GPU_CHECK_ABSENT"):
    with open(os.environ["GPU_CHECK_ABSENT"]) as f:
        for name in f.read().split():
            sys.modules.setdefault(name, None)
