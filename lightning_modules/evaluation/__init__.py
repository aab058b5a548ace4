"""Evaluation: one evaluator per kind of evaluation batch, the metric functions they use,
and the evaluation of any model on STS files and BEIR folders (``python -m train.evaluate``).

============================ ========================= =====================================
evaluator                    batch                     metrics (primary first)
============================ ========================= =====================================
``CorrelationEvaluator``     ``ScoredPairsBatch``      spearman, pearson
``ClassificationEvaluator``  ``LabelledPairsBatch``    auc, f1, accuracy (+ thresholds on val)
``CorpusRetrievalEvaluator`` ``QueryBatch``            ndcg@10, mrr@10, recall@10, recall@100
``PairRetrievalEvaluator``   ``QueryBatch`` (pairs)    mrr@10, ndcg@10, recall@1, recall@10, recall@100
============================ ========================= =====================================
"""

from lightning_modules.evaluation.beir import CorpusRetrievalEvaluator, PairRetrievalEvaluator, evaluate_beir
from lightning_modules.evaluation.base import EVALUATORS, Evaluator, evaluator_for, evaluator_named
from lightning_modules.evaluation.classification import ClassificationEvaluator
from lightning_modules.evaluation.correlation import CorrelationEvaluator

__all__ = [
    "EVALUATORS",
    "ClassificationEvaluator",
    "CorpusRetrievalEvaluator",
    "CorrelationEvaluator",
    "Evaluator",
    "PairRetrievalEvaluator",
    "evaluate_beir",
    "evaluator_for",
    "evaluator_named",
]
