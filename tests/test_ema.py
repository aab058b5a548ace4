"""ValidatedEMA: the weights it validates, saves and leaves in the module are the exponential moving
average of the training weights, checked against a float64 reference computed step by step."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import ValidatedEMA

DECAY = 0.9


class TinyRegression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.register_buffer("positions", torch.arange(5))  # an integer buffer, as BERT's position_ids
        self.seen = []  # the training weights after each optimizer step, float64

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append([p.detach().double().clone() for p in self.layer.parameters()])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_module_ends_with_the_moving_average_of_its_training_weights(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 4), torch.randn(24, 3))
    module = TinyRegression()
    ema = ValidatedEMA(decay=DECAY)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[ema], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))

    assert len(module.seen) == 12 and trainer.global_step == 12
    reference = module.seen[0]  # the first update copies the weights
    for weights in module.seen[1:]:
        reference = [DECAY * r + (1 - DECAY) * w for r, w in zip(reference, weights)]
    last = module.seen[-1]
    for param, expected, trained in zip(module.layer.parameters(), reference, last):
        assert torch.allclose(param.double(), expected, atol=1e-6)
        assert not torch.allclose(param.double(), trained, atol=1e-3)  # the average, not the last weights
    assert torch.equal(module.positions, torch.arange(5))
    # One fused update for all tensors of a dtype, not one tensor at a time.
    assert ema._average_model.multi_avg_fn is not None
