"""The Lightning system: losses, optimisation, metrics. The model itself lives in ``model.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torchmetrics import CatMetric, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.functional.classification import binary_auroc
from transformers import get_linear_schedule_with_warmup

from lightning_modules.encoder import TokenEncoder
from lightning_modules.losses import CoSENTLoss, InfoNCELoss, ScoreRegressionLoss
from lightning_modules import maxsim_lik
from lightning_modules.maxsim import BACKENDS, triton_installed
from lightning_modules.metrics import best_threshold_metrics, metrics_at_threshold, retrieval_metrics
from lightning_modules.model import LateInteractionModel

# How the MaxSim engine computes in-batch score matrices (``model.maxsim`` in config).
ENGINE_DEFAULTS = {"backend": "auto", "chunk_budget_mb": 16}

log = logging.getLogger(__name__)


class MaxSimModule(pl.LightningModule):
    """Train a late-interaction model on scored text pairs.

    Every argument is a plain value, so the checkpoint's hyperparameters load with
    ``torch.load(weights_only=True)``.

    Encoder (see ``TokenEncoder``): ``model_name_or_path``, ``projection_dim``,
    ``skip_special_tokens``, ``skip_punctuation``, ``random_init``, ``config_overrides``,
    and ``gradient_checkpointing``: recompute each encoder layer during the backward
    pass instead of keeping its activations (about one layer's activations instead of
    all of them, for about a third more compute). With a memory-lean MaxSim backend it
    is what lets large in-batch contrastive batches fit (``benchmarks/contrastive_batch.py``).

    MaxSim (see ``lightning_modules.maxsim``): what the score is, ``direction``,
    ``reduction``, ``temperature``; and how the engine computes in-batch score matrices,
    ``maxsim``, a dict of ``ENGINE_DEFAULTS`` keys that change the scores by rounding at
    most: ``backend`` (``auto``: the fused triton kernels on a GPU of compute capability 8.0
    or newer, when Triton is installed and the kernels take the inputs; otherwise dense
    for small matrices and the memory-lean chunked backend for large ones), and
    ``chunk_budget_mb``, the chunked backend's budget for the largest tensor of one block
    of text pairs (16 MB: a block is still a large matrix product; more on a GPU means
    fewer, larger blocks). The triton backward is deterministic when Lightning's
    ``Trainer(deterministic=True)`` is set.

    What a batch holds decides how it trains (see ``lightning_modules.data.collate``):

    * scored pairs (``scores``): loss = ``cosent_weight * CoSENT + regression_weight * MSE
      + infonce_weight * InfoNCE``; a weight of 0 switches a term off. InfoNCE uses
      the pairs whose gold score is at least ``infonce_min_score`` as positives and
      the other texts of the batch as negatives;
    * positive pairs with hard negatives (``false_negatives``): InfoNCE of each ``a``
      text against every ``b`` text and hard negative of the batch, known positives
      masked out; ``infonce_symmetric`` also picks each ``b`` text's ``a`` (for
      symmetric tasks, not for queries and documents).

    Optimisation: AdamW (no weight decay on biases and norms), ``lr`` for the encoder,
    ``lr * projection_lr_multiplier`` for a fresh projection, linear warmup over
    ``warmup_ratio`` of the steps then linear decay to 0.

    Metrics (x100; every process's predictions are gathered. Under DDP, Lightning's
    sampler repeats up to ``world_size - 1`` items to even out the shards, which can
    move the figures by a hair), by what the evaluation batches hold:

    * ``scores``: ``{val,test}/spearman``, ``/pearson``;
    * ``labels``: ``/auc`` (ROC-AUC), ``/f1`` and ``/accuracy``. On validation, each at
      its best threshold, logged as ``val/f1_threshold`` and ``val/accuracy_threshold``
      and kept in the checkpoint; on test, at the thresholds of the validation;
    * ``text_keys``: ``/mrr@10``, ``/recall@1``, ``/recall@10`` of each query against
      the whole corpus of the split.
    """

    def __init__(
        self,
        model_name_or_path: str,
        projection_dim: int | None = 128,
        skip_special_tokens: bool = False,
        skip_punctuation: bool = False,
        random_init: bool = False,
        config_overrides: dict[str, Any] | None = None,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
        maxsim: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        cosent_weight: float = 1.0,
        cosent_scale: float = 20.0,
        regression_weight: float = 0.0,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.05,
        infonce_min_score: float = 0.8,
        infonce_symmetric: bool = True,
        lr: float = 2e-5,
        projection_lr_multiplier: float = 1.0,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = TokenEncoder(
            model_name_or_path,
            projection_dim=projection_dim,
            skip_special_tokens=skip_special_tokens,
            skip_punctuation=skip_punctuation,
            random_init=random_init,
            config_overrides=config_overrides,
        )
        if gradient_checkpointing:
            _enable_checkpointing(encoder.backbone)
        engine = _engine_settings(maxsim)
        self.model = LateInteractionModel(encoder, direction, reduction, temperature, backend=engine["backend"],
                                          chunk_budget_bytes=int(engine["chunk_budget_mb"] * 2**20))
        # from_pretrained returns the encoder in eval mode and Lightning keeps modes
        # as it finds them: switch dropout on explicitly (config_overrides can set
        # the dropout probabilities, 0 included).
        self.model.train()
        self.cosent = CoSENTLoss(scale=cosent_scale)
        self.regression = ScoreRegressionLoss()
        self.infonce = InfoNCELoss(temperature=infonce_temperature, symmetric=True)
        self.pair_infonce = InfoNCELoss(temperature=infonce_temperature, symmetric=infonce_symmetric)
        self.val_spearman, self.val_pearson = SpearmanCorrCoef(), PearsonCorrCoef()
        self.test_spearman, self.test_pearson = SpearmanCorrCoef(), PearsonCorrCoef()
        # Pair classification: every score and label of the split, then threshold search.
        # nan_strategy="disable": a NaN score stays in place, so scores and labels stay aligned.
        self.eval_scores, self.eval_labels = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        # Chosen on validation (F1, accuracy), used on test; in the checkpoint. NaN: not yet chosen.
        self.register_buffer("decision_thresholds", torch.full((2,), float("nan")))
        self._retrieval_texts: list[tuple[bool, int, torch.Tensor, list[int]]] = []

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints from before pair classification have no thresholds: not chosen yet.
        checkpoint["state_dict"].setdefault("decision_thresholds", torch.full((2,), float("nan")))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score a batch of pairs: ``input_ids (2B, L)`` holds the ``a`` texts then the ``b`` texts. Returns ``(B,)``."""
        a, b = self.model.embed(input_ids, attention_mask).split(input_ids.shape[0] // 2)
        return self.model.score_pairs(a, b)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "false_negatives" in batch:
            loss, pairs = self._contrastive_loss(batch), batch["false_negatives"].shape[0]
        else:
            loss, pairs = self._scored_loss(batch), batch["scores"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=pairs)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=pairs)
        return loss

    def _scored_loss(self, batch: dict) -> torch.Tensor:
        gold = batch["scores"]
        a, b = self.model.embed(batch["input_ids"], batch["attention_mask"]).split(gold.shape[0])
        predicted = self.model.score_pairs(a, b)
        hp = self.hparams
        loss = predicted.new_zeros(())
        if hp.cosent_weight:
            loss = loss + hp.cosent_weight * self.cosent(predicted, gold)
        if hp.regression_weight:
            loss = loss + hp.regression_weight * self.regression(predicted, gold)
        if hp.infonce_weight:
            positives = gold >= hp.infonce_min_score
            if positives.sum() >= 2:  # one positive alone has no in-batch negative
                scores = self.model.score_matrix(a.select(positives), b.select(positives))
                loss = loss + hp.infonce_weight * self.infonce(scores)
        return loss

    def _contrastive_loss(self, batch: dict) -> torch.Tensor:
        """``input_ids (2B + N, L)``: ``a`` texts, ``b`` texts, hard negatives; ``false_negatives (B, B + N)``."""
        pairs = batch["false_negatives"].shape[0]
        # Each side is encoded at its own length: the collator pads every row to the longest
        # text, and short queries padded to document length would multiply the encoder's
        # work and the (Ba, Bb, La) argmax indices of the MaxSim backward pass.
        sizes = [pairs, batch["input_ids"].shape[0] - pairs]
        a, candidates = (
            self.model.embed(*_trim_padding(ids, mask))
            for ids, mask in zip(batch["input_ids"].split(sizes), batch["attention_mask"].split(sizes))
        )
        scores = self.model.score_matrix(a, candidates)
        return self.pair_infonce(scores, mask=batch["false_negatives"])

    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        return self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: dict, batch_idx: int) -> dict | None:
        return self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = _parameter_groups(self.model, hp.lr, hp.weight_decay, hp.projection_lr_multiplier)
        # fused: one kernel over all parameters instead of a Python loop over tensors.
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, fused=True)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _evaluation_step(self, batch: dict, split: str) -> dict | None:
        """Update the split's metrics. Pair batches return ``{"predicted": (B,), "gold": (B,)}``
        (scores or labels) for callbacks such as ``EvaluationPlots``; retrieval batches None."""
        if "text_keys" in batch:
            encoded = self.model.embed(batch["input_ids"], batch["attention_mask"])
            for row, (is_query, key, relevant) in enumerate(zip(batch["is_query"], batch["text_keys"], batch["relevant"])):
                vectors = encoded.vectors[row][encoded.mask[row]].float().cpu()
                self._retrieval_texts.append((bool(is_query), int(key), vectors, relevant))
            return
        predicted = self(batch["input_ids"], batch["attention_mask"])
        if "labels" in batch:
            self.eval_scores.update(predicted.float())
            self.eval_labels.update(batch["labels"])
            return {"predicted": predicted.detach(), "gold": batch["labels"]}
        for metric in self._correlations(split):
            metric.update(predicted, batch["scores"])
        return {"predicted": predicted.detach(), "gold": batch["scores"]}

    def _log_evaluation(self, split: str) -> None:
        if self._retrieval_texts:
            metrics = self._retrieval_metrics()
        elif self.eval_labels.update_called:
            metrics = self._classification_metrics(split)
        else:
            spearman, pearson = self._correlations(split)
            metrics = {"spearman": spearman.compute(), "pearson": pearson.compute()}
            spearman.reset()
            pearson.reset()
        for name, value in metrics.items():
            # x100, the convention of STS papers and MTEB tables; thresholds are similarities, kept as they are.
            scale = 1.0 if name.endswith("threshold") else 100.0
            self.log(f"{split}/{name}", scale * torch.as_tensor(value, dtype=torch.float32),
                     prog_bar=name in ("spearman", "auc", "mrr@10"))

    def _correlations(self, split: str) -> tuple:
        return (self.val_spearman, self.val_pearson) if split == "val" else (self.test_spearman, self.test_pearson)

    def _classification_metrics(self, split: str) -> dict:
        scores, labels = self.eval_scores.compute().flatten(), self.eval_labels.compute().flatten()
        self.eval_scores.reset()
        self.eval_labels.reset()
        metrics = {"auc": binary_auroc(scores, labels.long())}
        if split == "val" or torch.isnan(self.decision_thresholds).any():
            if split != "val":
                log.warning("No validation has chosen decision thresholds: %s F1 and accuracy use the best "
                            "thresholds of this split itself (optimistic)", split)
            best = best_threshold_metrics(scores, labels)
            if split == "val" and not self.trainer.sanity_checking:
                self.decision_thresholds.copy_(torch.tensor([best["f1_threshold"], best["accuracy_threshold"]]))
            return {**metrics, **best}
        f1_threshold, accuracy_threshold = self.decision_thresholds.tolist()
        return {
            **metrics,
            "f1": metrics_at_threshold(scores, labels, f1_threshold)["f1"],
            "accuracy": metrics_at_threshold(scores, labels, accuracy_threshold)["accuracy"],
        }

    def _retrieval_metrics(self) -> dict:
        """Every query of the split against the whole corpus, from the token vectors kept on the CPU."""
        texts, self._retrieval_texts = self._retrieval_texts, []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, texts)  # every process needs the whole corpus
            texts = [text for shard in gathered for text in shard]
        queries = {key: (vectors, relevant) for is_query, key, vectors, relevant in texts if is_query}
        corpus = {key: vectors for is_query, key, vectors, _ in texts if not is_query}
        # A partial pass (fast_dev_run, limit_val_batches) may miss corpus texts: keep the queries
        # whose relevant texts were all seen, and rank them against the corpus that was.
        complete = {k: q for k, q in queries.items() if all(c in corpus for c in q[1])}
        if len(complete) < len(queries):
            log.warning("Retrieval evaluation on %d of %d queries: the others' relevant texts were not embedded "
                        "(a partial validation pass)", len(complete), len(queries))
        queries = complete
        if not queries or not corpus:
            return {"mrr@10": float("nan"), "recall@1": float("nan"), "recall@10": float("nan")}
        query_keys, corpus_keys = sorted(queries), sorted(corpus)
        column = {key: i for i, key in enumerate(corpus_keys)}
        scores = self.model.score_vectors([queries[k][0] for k in query_keys], [corpus[k] for k in corpus_keys],
                                          show_progress_bar=True, desc="retrieval evaluation")
        return retrieval_metrics(scores, [[column[c] for c in queries[k][1]] for k in query_keys])


def _parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, projection_lr_multiplier: float):
    """AdamW groups: no decay for biases and norm weights; the projection may get its own rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim >= 2
        is_projection = name.startswith("encoder.projection")
        groups.setdefault((decay, is_projection), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * (projection_lr_multiplier if is_projection else 1.0),
        }
        for (decay, is_projection), params in groups.items()
    ]


def _trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, L)`` -> ``(T, L')``: drop the trailing columns that are padding in every row."""
    length = int(attention_mask.any(dim=0).nonzero().max()) + 1
    return input_ids[:, :length], attention_mask[:, :length]


def _engine_settings(maxsim: dict[str, Any] | None) -> dict[str, Any]:
    """``ENGINE_DEFAULTS`` updated with ``maxsim``. Refused here, at construction rather than at
    the first in-batch step: anything but a mapping, unknown keys and backend names, and a
    backend whose package is not installed. (Whether the tensors are on a GPU, which the
    triton and late-interaction-kernels backends need, is known only when they are scored.)"""
    if maxsim is not None and not isinstance(maxsim, Mapping):
        raise ValueError(f"model.maxsim must be a mapping of engine settings such as {{backend: auto}}, got "
                         f"{maxsim!r}; to choose a backend: model.maxsim.backend=<name>")
    settings = {**ENGINE_DEFAULTS, **(maxsim or {})}
    unknown = sorted(set(settings) - set(ENGINE_DEFAULTS))
    if unknown:
        raise ValueError(f"model.maxsim: unknown key(s) {unknown}; known: {sorted(ENGINE_DEFAULTS)}")
    if settings["backend"] not in BACKENDS:
        raise ValueError(f"model.maxsim.backend must be one of {BACKENDS}, got {settings['backend']!r}")
    budget = settings["chunk_budget_mb"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget * 2**20 >= 1:
        raise ValueError(f"model.maxsim.chunk_budget_mb must be a number of megabytes > 0, got {budget!r}")
    if settings["backend"] == "triton" and not triton_installed():
        raise ValueError("model.maxsim.backend=triton needs the triton package: pip install 'maxsim-lightning[triton]'")
    if settings["backend"] == "late-interaction-kernels" and not maxsim_lik.installed():
        raise ValueError("model.maxsim.backend=late-interaction-kernels needs that package: "
                         "pip install late-interaction-kernels")
    return settings


def _enable_checkpointing(backbone) -> None:
    """Recompute the layers of a Hugging Face model in backward (transformers 5 renamed the switch).

    Non-reentrant checkpointing: works when the inputs need no gradient, and under DDP.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
