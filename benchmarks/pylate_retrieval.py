"""Run inside the PyLate virtual environment (``make interop-env``): fine-tune PyLate's ColBERT with its
``Contrastive`` loss on given examples (a query, its positive, hard negatives), then rank every query against the whole corpus.

stdin: {"model", "examples": [{"query", "positive", "negative_1", ...}], "corpus": [...], "queries": [...],
"epochs", "batch_size", "lr", "seed", "document_length", "depth", "latency_queries", "exclude", "out"};
written to ``out``: one JSON object: {"pylate", "ranked": [[corpus index, ...], ...], "train_time_s", "train_pairs",
"latency_ms_per_query", "bytes_per_document", "dim"}. Metrics are computed by the caller, with
the same function as every other system. Kept free of project imports: PyLate's pins
(sentence-transformers 5.3, transformers <= 5.3) cannot share the project's environment.
"""

import json
import sys
import tempfile
import time

import datasets
import pylate
import torch
import transformers
from pylate import losses, models, utils
from pylate.scores import colbert_scores
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

CHUNK = 256  # documents scored against all queries at once


def pad(vectors):
    """A list of ``(L_i, D)`` arrays -> ``(N, L, D)`` float32 and the ``(N, L)`` mask."""
    tensors = [torch.as_tensor(v, dtype=torch.float32) for v in vectors]
    longest = max(t.shape[0] for t in tensors)
    out = torch.zeros(len(tensors), longest, tensors[0].shape[1])
    mask = torch.zeros(len(tensors), longest)
    for i, t in enumerate(tensors):
        out[i, : len(t)], mask[i, : len(t)] = t, 1
    return out, mask


def rank(query_vectors, document_vectors, depth, exclude=None):
    """The ``depth`` best documents per query (ties: lower index first); ``exclude[q]``: a document
    never returned for query q (BEIR drops a document whose id is the query's)."""
    queries, query_mask = pad(query_vectors)
    excluded = torch.tensor([-1 if e is None else e for e in (exclude or [None] * len(queries))])
    order = sorted(range(len(document_vectors)), key=lambda i: len(document_vectors[i]))
    best_scores = torch.full((len(queries), 0), float("-inf"))
    best_indices = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(order), CHUNK):
        chunk = order[start : start + CHUNK]
        documents, document_mask = pad([document_vectors[i] for i in chunk])
        scores = colbert_scores(queries, documents, query_mask, document_mask, backend="torch")
        indices = torch.tensor(chunk).expand(len(queries), -1)
        scores = scores.masked_fill(indices == excluded[:, None], float("-inf"))
        scores, indices = torch.cat([best_scores, scores], 1), torch.cat([best_indices, indices], 1)
        by_index = torch.argsort(indices, dim=1, stable=True)
        scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
        best_scores, best_indices = scores.gather(1, top), indices.gather(1, top)
    return best_indices


def main():
    request = json.load(sys.stdin)
    transformers.set_seed(request["seed"])
    model = models.ColBERT(model_name_or_path=request["model"], document_length=request["document_length"],
                           device="cpu")
    examples = request["examples"]
    dataset = datasets.Dataset.from_dict({key: [e[key] for e in examples] for key in examples[0]})  # columns in order
    with tempfile.TemporaryDirectory(prefix="bench_pylate_") as tmpdir:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=tmpdir, num_train_epochs=request["epochs"], per_device_train_batch_size=request["batch_size"],
            learning_rate=request["lr"], warmup_steps=0.1, seed=request["seed"], eval_strategy="no",
            save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset,
                                             loss=losses.Contrastive(model=model),
                                             data_collator=utils.ColBERTCollator(model.tokenize))
        output = trainer.train()
    model.eval()
    documents = model.encode(request["corpus"], is_query=False, batch_size=32, convert_to_numpy=True)
    queries = model.encode(request["queries"], is_query=True, batch_size=32, convert_to_numpy=True)
    ranked = rank(queries, documents, request["depth"], request.get("exclude"))
    # Latency: one query at a time, encoded and scored against the stored corpus vectors.
    sample = request["queries"][: request["latency_queries"]]
    start = time.perf_counter()
    for text in sample:
        rank(model.encode([text], is_query=True, convert_to_numpy=True), documents, request["depth"])
    latency = 1000 * (time.perf_counter() - start) / len(sample)
    dim = int(documents[0].shape[1])
    result = {
        "pylate": pylate.__version__,
        "ranked": ranked.tolist(),
        "train_time_s": float(output.metrics["train_runtime"]),
        "train_pairs": len(dataset) * request["epochs"],
        "latency_ms_per_query": latency,
        "bytes_per_document": 4 * dim * sum(len(d) for d in documents) / len(documents),
        "dim": dim,
    }
    with open(request["out"], "w", encoding="utf-8") as handle:  # stdout carries the trainer's own prints
        json.dump(result, handle)


if __name__ == "__main__":
    main()
