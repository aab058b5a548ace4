"""The Lightning system: losses, optimisation, evaluation and logging. The model itself lives in
``lightning_modules.model`` (a plain ``nn.Module``), the metrics in ``lightning_modules.evaluation``."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from transformers import get_linear_schedule_with_warmup

from lightning_modules.data.batches import ContrastiveBatch, DistillationBatch, ScoredPairsBatch, TokenBatch
from lightning_modules.datamodules.base import LateInteractionDataModule
from lightning_modules.distributed import world_size
from lightning_modules.encoder import EncoderOptions, TokenEmbeddings
from lightning_modules.errors import SettingsError
from lightning_modules.evaluation import Evaluator, evaluator_for, evaluator_named
from lightning_modules.gradcache import GradCache
from lightning_modules.losses import CoSENTLoss, InfoNCELoss, ScoreRegressionLoss, cross_device_infonce
from lightning_modules.losses import distillation_loss as make_distillation_loss  # the name of an argument below
from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.model import LateInteractionModel

log = logging.getLogger(__name__)

# What the score losses of scored pairs see of a hybrid score (``pooled_weight``; MaxSimModule).
LOSS_SCORES = ("mix", "views", "maxsim")


class MaxSimModule(pl.LightningModule):
    """Train a late-interaction model on scored text pairs.

    Every argument is a plain value, so the checkpoint's hyperparameters load with
    ``torch.load(weights_only=True)``.

    Encoder: ``model_name_or_path`` and, as further keyword arguments (``encoder_options``:
    flat, like the rest, in ``conf/model/*.yaml`` and ``hparams``), the other fields of
    ``lightning_modules.encoder.EncoderOptions``; any other name is a ``SettingsError``.
    ``gradient_checkpointing``: recompute each encoder layer during the backward
    pass instead of keeping its activations (about one layer's activations instead of
    all of them, for about a third more compute). With a memory-lean MaxSim backend it
    is what lets large in-batch contrastive batches fit (``benchmarks/contrastive_batch.py``).

    MaxSim (see ``lightning_modules.maxsim``): what the score is, ``direction``,
    ``reduction``, ``temperature``; and how the engine computes in-batch score matrices,
    ``maxsim``, a dict of ``ENGINE_DEFAULTS`` keys (``backend``, ``chunk_budget_mb``) that
    change the scores by rounding at most (``lightning_modules.maxsim.engine_settings``;
    the ``auto`` policy: docs/engine.md). ``pooled_weight``: the hybrid score
    ``(1 - w) * MaxSim + w * cos`` of the texts' mean token vectors, trained and evaluated alike
    (``lightning_modules.maxsim.pooled``; 0: MaxSim alone). ``loss_score``: what the score losses of
    scored pairs see when ``w`` is not 0: ``"mix"``, the hybrid score itself; ``"views"``, each view
    on its own, ``(1 - w) * loss(MaxSim) + w * loss(cos)``; ``"maxsim"``, MaxSim alone, the pooled
    view entering at scoring only (docs/recipe.md measured the three).

    The kind of training batch (``lightning_modules.data.batches``) decides how it trains:

    * ``ScoredPairsBatch``: loss = ``cosent_weight * CoSENT + regression_weight * MSE
      + infonce_weight * InfoNCE``; a weight of 0 switches a term off. InfoNCE uses
      the pairs whose gold score is at least ``infonce_min_score`` as positives and
      the other texts of the batch as negatives;
    * ``ContrastiveBatch`` (positive pairs with hard negatives): InfoNCE of each ``a``
      text against every ``b`` text and hard negative of the batch, known positives
      masked out; ``infonce_symmetric`` also picks each ``b`` text's ``a`` (for
      symmetric tasks, not for queries and documents);
    * ``DistillationBatch`` (queries with ``N`` candidates and a teacher's scores of them): the
      student's MaxSim of each query's candidates against the teacher's, ``distillation_loss``
      ``kl`` (with ``distillation_student_temperature``, ``distillation_teacher_temperature`` and
      per-query min-max normalisation, ``distillation_normalize_scores``) or ``margin_mse``
      (``lightning_modules.losses.distillation``).

    Beyond one process and one memory (docs/scale.md):

    * ``gather_across_devices``: under several processes, each ``ContrastiveBatch`` query is also
      scored against the ``b`` texts and hard negatives of every other process, gathered with
      their gradients (``lightning_modules.losses.cross_device``); the update equals one process
      training on the whole global batch. Scored pairs still train per process.
    * ``gradcache``: ``{"mini_batch_size": N, "token_budget": T}`` (either, or null: off). Encode
      each batch in mini-batches of at most N texts or T padded tokens and train on the whole
      batch's loss with gradient caching (``lightning_modules.gradcache``): activation memory of
      one mini-batch, for one more forward pass. Every kind of training batch; combines with
      ``gather_across_devices``.

    Optimisation: AdamW (no weight decay on biases and norms), ``lr`` for the encoder,
    ``lr * projection_lr_multiplier`` for a fresh projection, linear warmup over
    ``warmup_ratio`` of the steps then linear decay to 0. ``layer_lr_decay`` (< 1: layer-wise
    learning-rate decay) multiplies the rate of each encoder layer by ``decay ** k``, ``k`` its
    distance from the top layer (the embeddings one further down): lower layers, which hold the
    most general knowledge, move less.

    Evaluation: the DataModule's ``evaluator`` (taken in ``setup``; without a DataModule,
    the one that reads the first evaluation batch) scores each batch and computes the
    split's metrics, logged as ``{val,test}/<name>``, x100 (thresholds as they are;
    every process's predictions are gathered. Under DDP, Lightning's sampler repeats up
    to ``world_size - 1`` items to even out the shards, which can move the figures by a
    hair). See ``lightning_modules.evaluation`` for what each kind of batch reports.
    """

    def __init__(
        self,
        model_name_or_path: str,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
        maxsim: dict[str, Any] | None = None,
        pooled_weight: float = 0.0,
        loss_score: str = "mix",
        gradient_checkpointing: bool = False,
        cosent_weight: float = 1.0,
        cosent_scale: float = 20.0,
        regression_weight: float = 0.0,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.05,
        infonce_min_score: float = 0.8,
        infonce_symmetric: bool = True,
        gather_across_devices: bool = False,
        gradcache: dict[str, int | None] | None = None,
        lr: float = 2e-5,
        projection_lr_multiplier: float = 1.0,
        layer_lr_decay: float = 1.0,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        distillation_loss: str = "kl",
        distillation_student_temperature: float = 1.0,
        distillation_teacher_temperature: float = 1.0,
        distillation_normalize_scores: bool = True,
        **encoder_options: Any,
    ) -> None:
        super().__init__()
        if loss_score not in LOSS_SCORES:
            raise SettingsError(f"model.loss_score must be one of {LOSS_SCORES} (what the training losses of scored "
                                f"pairs see of the hybrid score), got {loss_score!r}")
        if isinstance(layer_lr_decay, bool) or not isinstance(layer_lr_decay, (int, float)) or not 0 < layer_lr_decay <= 1:
            raise SettingsError(f"model.layer_lr_decay must be a number in (0, 1] (each encoder layer's learning "
                                f"rate is lr * decay ** its depth below the top; 1: off), got {layer_lr_decay!r}")
        self.save_hyperparameters()  # encoder_options too, flat (Lightning merges **kwargs in)
        encoder = EncoderOptions.from_settings({"model_name_or_path": model_name_or_path, **encoder_options},
                                               strict=True)
        self.model = LateInteractionModel.build(encoder, direction, reduction, temperature, maxsim,
                                                pooled_weight=pooled_weight)
        if gradient_checkpointing:
            _enable_checkpointing(self.model.encoder.backbone)
        # from_pretrained returns the encoder in eval mode and Lightning keeps modes
        # as it finds them: switch dropout on explicitly (config_overrides can set
        # the dropout probabilities, 0 included).
        self.model.train()
        self.cosent = CoSENTLoss(scale=cosent_scale)
        self.regression = ScoreRegressionLoss()
        self.infonce = InfoNCELoss(temperature=infonce_temperature, symmetric=True)
        self.pair_infonce = InfoNCELoss(temperature=infonce_temperature, symmetric=infonce_symmetric)
        self.gradcache = GradCache.from_settings(gradcache)
        # A teacher's scores of each query's candidates (KL or Margin-MSE).
        self.distillation = make_distillation_loss(distillation_loss, distillation_student_temperature,
                                                   distillation_teacher_temperature, distillation_normalize_scores)
        # The training loss of each kind of training batch.
        self._losses = {ScoredPairsBatch: self._scored_loss, ContrastiveBatch: self._contrastive_loss,
                        DistillationBatch: self._distillation_loss}
        self.evaluator: Evaluator | None = None  # the DataModule's, attached in setup

    def setup(self, stage: str) -> None:
        # The DataModule names the evaluator of its evaluation batches. Set before a checkpoint is
        # restored and before the module moves to its device, so its state is both restored and moved.
        datamodule = self.trainer.datamodule
        if self.evaluator is None and isinstance(datamodule, LateInteractionDataModule):
            self.evaluator = datamodule.evaluator

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Which evaluator the state dict's "evaluator.*" entries belong to, so that a module loaded
        # without a DataModule (load_from_checkpoint) can rebuild it before the weights load.
        if self.evaluator is not None:
            checkpoint["evaluator"] = type(self.evaluator).__name__

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        if self.evaluator is None and checkpoint.get("evaluator"):
            self.evaluator = evaluator_named(checkpoint["evaluator"]).to(self.device)
        # Before evaluators, the decision thresholds were the system's own buffer; they are the
        # classification evaluator's now, and no other evaluator has them.
        thresholds = state.pop("decision_thresholds", None)
        if self.evaluator is not None and hasattr(self.evaluator, "decision_thresholds"):
            state.setdefault("evaluator.decision_thresholds",
                             thresholds if thresholds is not None else torch.full((2,), float("nan")))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score a batch of pairs: ``input_ids (2B, L)`` holds the ``a`` texts then the ``b`` texts. Returns ``(B,)``."""
        a, b = self.model.embed(input_ids, attention_mask).split(input_ids.shape[0] // 2)
        return self.model.score_pairs(a, b)

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        compute_loss = self._losses.get(type(batch))
        if compute_loss is None:
            raise TypeError(f"no training loss for {type(batch).__name__}; trainable batches: "
                            f"{sorted(kind.__name__ for kind in self._losses)}")
        if batch_idx == 0 and self.hparams.gather_across_devices and not isinstance(batch, ContrastiveBatch):
            rank_zero_warn(f"model.gather_across_devices applies to contrastive batches; {type(batch).__name__} "
                           "trains on each process's own batch")
        loss = compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.num_pairs)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=batch.num_pairs)
        return loss

    def _scored_loss(self, batch: ScoredPairsBatch) -> torch.Tensor:
        """``input_ids (2B, L)``: the ``a`` texts then the ``b`` texts, one side for GradCache."""
        return self._train_on(self._objective_of_scored_pairs(batch), (batch.input_ids, batch.attention_mask))

    def _contrastive_loss(self, batch: ContrastiveBatch) -> torch.Tensor:
        """``input_ids (2B + N, L)``: ``a`` texts, ``b`` texts, hard negatives; ``false_negatives (B, B + N)``."""
        return self._train_on(self._objective_of_contrastive(batch), *_two_sides(batch, batch.num_pairs))

    def _distillation_loss(self, batch: DistillationBatch) -> torch.Tensor:
        """``input_ids (Q + Q * N, L)``: the queries, then each query's ``N`` candidates; ``teacher_scores (Q, N)``.

        Each query is scored against its own ``N`` candidates only (``score_pairs`` of the query's
        vectors, repeated ``N`` times, with its documents), and ``distillation_loss`` compares the
        ``(Q, N)`` scores with the teacher's (``lightning_modules.losses.distillation``).
        """
        queries, ways = batch.teacher_scores.shape

        def objective(query_vectors: TokenEmbeddings, documents: TokenEmbeddings) -> torch.Tensor:
            # Rows of the repeated queries line up with the documents: query 0 N times, then query 1, ...
            rows = torch.arange(queries, device=batch.input_ids.device).repeat_interleave(ways)
            scores = self.model.score_pairs(query_vectors.select(rows), documents).view(queries, ways)
            return self.distillation(scores, batch.teacher_scores)

        return self._train_on(objective, *_two_sides(batch, queries))

    def _train_on(self, objective, *sides: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``objective(*embeddings)``, one ``TokenEmbeddings`` per side ``(input_ids, attention_mask)``:
        encoded at once, or in mini-batches with gradient caching (``model.gradcache``)."""
        if self.gradcache is None:
            return objective(*(self.model.embed(ids, mask) for ids, mask in sides))
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        return self.gradcache.loss(self.model.embed, sides, objective, trainable, loss_scale=self._loss_scale())

    def _loss_scale(self) -> float:
        """fp16 training's current loss scale (the precision plugin's GradScaler), else 1."""
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _objective_of_scored_pairs(self, batch: ScoredPairsBatch):
        gold = batch.scores
        hp = self.hparams

        def objective(texts: TokenEmbeddings) -> torch.Tensor:
            a, b = texts.split(gold.shape[0])
            loss = gold.new_zeros(())
            for share, predicted in self._scored_views(a, b):
                if hp.cosent_weight:
                    loss = loss + share * hp.cosent_weight * self.cosent(predicted, gold)
                if hp.regression_weight:
                    loss = loss + share * hp.regression_weight * self.regression(predicted, gold)
            if hp.infonce_weight:
                positives = gold >= hp.infonce_min_score
                if positives.sum() >= 2:  # one positive alone has no in-batch negative
                    scores = self.model.score_matrix(a.select(positives), b.select(positives))
                    loss = loss + hp.infonce_weight * self.infonce(scores)
            return loss

        return objective

    def _scored_views(self, a: TokenEmbeddings, b: TokenEmbeddings) -> list[tuple[float, torch.Tensor]]:
        """The ``(share of the loss, scores (B,))`` that the score losses of aligned pairs apply to, as
        ``loss_score`` says: the model's score; MaxSim and the pooled cosine by their mix weights; MaxSim."""
        weight, loss_score = self.model.pooled_weight, self.hparams.get("loss_score", "mix")
        if not weight or loss_score == "mix":
            return [(1.0, self.model.score_pairs(a, b))]
        if loss_score == "maxsim":
            return [(1.0, maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask, **self.model.maxsim_options()))]
        maxsim, pooled = self.model.score_views(a, b)
        return [(1.0 - weight, maxsim), (weight, pooled)]

    def _objective_of_contrastive(self, batch: ContrastiveBatch):
        def objective(queries: TokenEmbeddings, candidates: TokenEmbeddings) -> torch.Tensor:
            if self.hparams.gather_across_devices and world_size() > 1:
                return cross_device_infonce(self.pair_infonce, self.model.score_matrix, queries, candidates,
                                            batch.column_keys, batch.positive_keys)
            return self.pair_infonce(self.model.score_matrix(queries, candidates), mask=batch.false_negatives)

        return objective

    def validation_step(self, batch: TokenBatch, batch_idx: int) -> dict | None:
        return self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: TokenBatch, batch_idx: int) -> dict | None:
        return self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = _parameter_groups(self.model, hp.lr, hp.weight_decay, hp.projection_lr_multiplier,
                                   hp.get("layer_lr_decay", 1.0))
        # fused: one kernel over all parameters instead of a Python loop over tensors.
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, fused=True)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _evaluation_step(self, batch: TokenBatch, split: str) -> dict | None:
        """Update the evaluator; pair batches return ``{"predicted": (B,), "gold": (B,)}`` for callbacks
        such as ``EvaluationPlots``, other batches None."""
        if self.evaluator is None:  # no DataModule named one: the evaluator of this kind of batch
            self.evaluator = evaluator_for(batch).to(self.device)
        with self.model.inference_context():  # the run's evaluation precision (lightning_modules.precision)
            return self.evaluator.update(self.model, batch)

    def _log_evaluation(self, split: str) -> None:
        record = not self.trainer.sanity_checking  # the sanity check chooses nothing for later splits
        with self.model.inference_context():
            metrics = self.evaluator.compute(self.model, split, record=record)
        for name, value in metrics.items():
            # x100, the convention of STS papers and MTEB tables; thresholds are similarities, kept as they are.
            scale = 1.0 if name.endswith("threshold") else 100.0
            self.log(f"{split}/{name}", scale * torch.as_tensor(value, dtype=torch.float32),
                     prog_bar=name == self.evaluator.primary_metric)


def _parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, projection_lr_multiplier: float,
                      layer_lr_decay: float = 1.0):
    """AdamW groups: no decay for biases and norm weights; the projection may get its own rate, and each
    encoder layer ``layer_lr_decay ** depth`` of ``lr`` (``layer_depth``). The groups at ``lr`` itself come
    first: ``train/lr`` logs the first group's rate."""
    layers = model.encoder.backbone.config.num_hidden_layers
    groups: dict[tuple[bool, float, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim >= 2
        is_projection = name.startswith("encoder.projection")
        if is_projection:
            rate = lr * projection_lr_multiplier
        else:
            rate = lr * layer_lr_decay ** layer_depth(name.removeprefix("encoder.backbone."), layers)
        groups.setdefault((decay, rate, is_projection), []).append(parameter)
    ordered = sorted(groups.items(), key=lambda item: item[0][2] or item[0][1] != lr)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": rate}
            for (decay, rate, _), params in ordered]


def layer_depth(name: str, layers: int) -> int:
    """How far below the top a Hugging Face encoder's parameter ``name`` sits: 0 for the top layer (and
    anything above the layers, such as a final norm), ``layers - 1 - i`` for layer ``i``
    (``...layer.3.``, ``...layers.3.``), ``layers`` for the embeddings."""
    found = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
    if found:
        return layers - 1 - int(found.group(1))
    return layers if "embeddings" in name.split(".") else 0


def _two_sides(batch: TokenBatch, first: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows ``[:first]`` (queries, ``a`` texts) and the rest, each ``(input_ids, attention_mask)`` cut to
    its own length. The collator pads every row to the longest text; short queries padded to document
    length would multiply the encoder's work and the (Ba, Bb, La) argmax indices of MaxSim's backward."""
    sizes = [first, batch.input_ids.shape[0] - first]
    return [_trim_padding(ids, mask) for ids, mask in zip(batch.input_ids.split(sizes), batch.attention_mask.split(sizes))]


def _trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, L)`` -> ``(T, L')``: drop the trailing columns that are padding in every row."""
    length = int(attention_mask.any(dim=0).nonzero().max()) + 1
    return input_ids[:, :length], attention_mask[:, :length]


def _enable_checkpointing(backbone) -> None:
    """Recompute the layers of a Hugging Face model in backward (transformers 5 renamed the switch).

    Non-reentrant checkpointing: works when the inputs need no gradient, and under DDP.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
