"""The late-interaction model (a plain ``nn.Module``) and how it saves and loads itself.

``late_interaction``: ``LateInteractionModel``, token encoder + MaxSim; ``settings``: how texts
become tokens; ``saving``: the export directory (PyLate's format) and checkpoint reading;
``card``: the model card; ``onnx``: the encoder as an ONNX graph. Nothing here imports Lightning.
"""

from lightning_modules.model.late_interaction import LateInteractionModel
from lightning_modules.model.saving import write_export as export_model
from lightning_modules.model.settings import TextSettings, text_settings_from


__all__ = ["LateInteractionModel", "TextSettings", "export_model", "text_settings_from"]
