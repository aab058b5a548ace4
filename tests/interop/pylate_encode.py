"""Run inside the PyLate virtual environment: encode texts with PyLate, print the token vectors as JSON.

stdin: {"model": DIR, "texts": [...], "is_query": bool}; stdout: {"pylate": version, "embeddings": [[[...]]]}.
Kept free of project imports: PyLate's pins (sentence-transformers 5.3, transformers <= 5.3)
cannot share the project's environment.
"""

import json
import sys

import pylate
from pylate import models

request = json.load(sys.stdin)
model = models.ColBERT(model_name_or_path=request["model"], device="cpu")
embeddings = model.encode(request["texts"], is_query=request["is_query"], convert_to_numpy=True)
json.dump({"pylate": pylate.__version__, "embeddings": [e.tolist() for e in embeddings]}, sys.stdout)
