"""Run inside the PyLate virtual environment: encode texts with PyLate, print the token vectors as JSON.

stdin: {"model": DIR, "texts": [...]}; stdout: {"pylate": version, "documents": [[[...]]], "queries": [[[...]]]}.
Kept free of project imports: PyLate's pins (sentence-transformers 5.3, transformers <= 5.3)
cannot share the project's environment.
"""

import json
import sys

import pylate
from pylate import models

request = json.load(sys.stdin)
model = models.ColBERT(model_name_or_path=request["model"], device="cpu")
encoded = {
    side: [e.tolist() for e in model.encode(request["texts"], is_query=side == "queries", convert_to_numpy=True)]
    for side in ("documents", "queries")
}
json.dump({"pylate": pylate.__version__, **encoded}, sys.stdout)
