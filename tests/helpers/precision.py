"""Overrides that pin fp32, for tests that compare a run's figures with an fp32 recomputation.

``precision: auto`` computes in bf16 where the CPU has bf16 units, and bf16 results depend on
how texts are batched, to bf16's rounding: enough to move a tiny model's Spearman or a
threshold over a few dozen pairs. Such tests pin fp32 on every machine, and so compare alike.
"""

# A training run's (``python -m train``, ``train.pipeline.run``).
FP32_TRAINING = "trainer.precision=32-true"
# A tool's (``train.evaluate``, ``train.search``, ``train.teacher_scores``, ...).
FP32_TOOL = "precision=32-true"
