"""``python -m train.score model=DIR a=... b=...`` or ``input=FILE``: MaxSim scores from the shell."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.data.columns import resolve_columns
from lightning_modules.data.formats import TableSpec, read_table
from lightning_modules.data.writing import WRITABLE, write_table
from lightning_modules.errors import DataError, InputError
from lightning_modules.model import LateInteractionModel
from train.cli import exit_on_user_error, literal_text_arguments


def score_file(model, cfg: DictConfig) -> Path:
    """Score every row of ``cfg.input``; write the same rows with ``cfg.column`` added."""
    source = Path(cfg.input)
    output = Path(cfg.output) if cfg.output else source.with_name(f"{source.stem}.scored{source.suffix}")
    if output.exists() and not cfg.overwrite:
        raise DataError(f"{output} already exists; choose output=... or pass overwrite=true")
    if output.suffix.lower() not in WRITABLE:  # say so before scoring, not after
        raise DataError(f"{output}: cannot write {output.suffix or '(no suffix)'!r}; choose output= ending in "
                        f"{', '.join(WRITABLE)}")
    table = read_table(TableSpec(str(source)), delimiter=cfg.delimiter, setting="delimiter")
    if cfg.column in table.columns:
        raise DataError(f"{source} already has a column {cfg.column!r}; choose another name with column=...")
    mapping = resolve_columns(table.source, table.columns, OmegaConf.to_container(cfg.columns), setting="columns",
                              read_as=table.read_as)
    a = [row.get(mapping.text_a) for row in table.rows]
    b = [row.get(mapping.text_b) for row in table.rows]
    for index, pair in enumerate(zip(a, b)):
        for column, text in zip((mapping.text_a, mapping.text_b), pair):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{table.where(index, column)}: empty text; every row needs two texts to score")
    print(f"Scoring {len(a)} pairs of {mapping.text_a!r} and {mapping.text_b!r} from {source}", file=sys.stderr)
    scores = model.score(a, b, batch_size=cfg.batch_size).tolist()
    rows = [{**row, cfg.column: round(score, 6)} for row, score in zip(table.rows, scores)]
    same_format = output.suffix.lower() == source.suffix.lower()
    write_table(output, [*table.columns, cfg.column], rows, delimiter=table.delimiter if same_format else None)
    return output


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="score")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if (cfg.input is None) == (cfg.a is None or cfg.b is None):
        raise InputError("give two texts (a=... b=...) or a file (input=...)")
    model = LateInteractionModel.load(cfg.model, setting="model").eval()
    if cfg.input is not None:
        print(f"Written to {score_file(model, cfg)}")
    else:
        print(f"{float(model.score([str(cfg.a)], [str(cfg.b)])[0]):.4f}")


if __name__ == "__main__":
    sys.argv = literal_text_arguments(sys.argv, ("a", "b"))  # any text: apostrophes, brackets, ${...}
    main()
