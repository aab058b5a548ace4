"""``python -m train.explain model=DIR a="..." b="..." out=heat.png``: draw how two texts match, token by token.

Writes a heatmap of the cosine between every token of ``a`` (rows) and every token
of ``b`` (columns), each token's best match marked and the model's MaxSim score in
the title (see ``lightning_modules.plots``), and prints the score and the path.
"""

import sys

import hydra
from omegaconf import DictConfig

from lightning_modules.errors import InputError
from train.cli import exit_on_user_error, literal_text_arguments


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="explain")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    # The texts first, before the imports (seconds of torch and transformers): a typo fails at once.
    a, b = _text(cfg.a, "a"), _text(cfg.b, "b")
    from lightning_modules.model import LateInteractionModel
    from lightning_modules.plots import draw_token_heatmap, token_similarity

    model = LateInteractionModel.load(cfg.model, setting="model").eval()
    match = token_similarity(model, a, b)
    out = draw_token_heatmap(match, cfg.out, title=cfg.title)
    print(match.describe_score())
    print(f"Saved to {out}")


def _text(value, name: str) -> str:
    """The text of override ``name``: Hydra hands ``a=42`` over as an int, so take any scalar as text."""
    if isinstance(value, (bool, int, float)):
        value = str(value)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be one text, got {type(value).__name__}; quote texts that contain "
                         f"commas or brackets: '{name}=\"...\"'")
    if not value.strip():
        raise InputError(f"{name} is empty; give the text to compare, e.g. {name}=\"A man is playing a guitar.\"")
    return value


if __name__ == "__main__":
    sys.argv = literal_text_arguments(sys.argv, ("a", "b"))  # any text: apostrophes, brackets, ${...}
    main()
