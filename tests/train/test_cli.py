"""The one wrapper that turns a user error into one paragraph and exit status 2."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from lightning_modules.errors import DataError, ExportError, InputError, ModelLoadError, UserError
from tests.helpers.cli import run_module
from train.cli import exit_on_user_error, literal_text_arguments, user_error_in


@pytest.mark.parametrize("kind", [DataError, ModelLoadError, ExportError, InputError])
def test_every_user_error_exits_2_with_its_message_only(kind, capsys):
    @exit_on_user_error
    def task():
        raise kind("data.train: no such file /x.csv")

    with pytest.raises(SystemExit) as stopped:
        task()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: data.train: no such file /x.csv\n"


def test_a_user_error_inside_hydras_instantiate_is_found_and_a_bug_keeps_its_traceback(capsys):
    cause = DataError("bad row 3")
    try:
        raise InstantiationException("Error in call to target 'X'") from cause
    except InstantiationException as wrapped:
        assert user_error_in(wrapped) is cause

    @exit_on_user_error
    def buggy():
        raise KeyError("a bug, not the user's")

    with pytest.raises(KeyError):
        buggy()
    assert capsys.readouterr().err == ""
    assert issubclass(DataError, ValueError) and issubclass(ModelLoadError, UserError)


@pytest.mark.parametrize("text", [
    "The man's guitar", "a, b [c] {d} = e", "costs ${5} or $HOME", "back\\slash", "ends with a backslash\\",
    "a\\'b", "\\${x}", "", "  spaced  ", "x=y",
])
def test_text_arguments_reach_the_config_as_typed(text):
    # The reference: Hydra's own override parser, then OmegaConf's resolution, as a tool reads a=.
    [argument] = literal_text_arguments([f"a={text}"], ("a",))
    value = OverridesParser.create().parse_override(argument).value()
    assert OmegaConf.create({"a": value}).a == text


def test_hydra_quoted_and_other_arguments_are_left_alone():
    argv = ["train.score", "model=/m", "a='A man\\'s guitar'", "b=x", "+a=y", "ab=z"]
    assert literal_text_arguments(argv, ("a", "b")) == ["train.score", "model=/m", "a='A man\\'s guitar'", "b='x'",
                                                        "+a=y", "ab=z"]


@pytest.mark.parametrize(("tool", "arguments", "setting"), [
    ("train.export", [], "ckpt"),
    ("train.explain", ["model=somewhere"], "a"),
])
def test_a_required_setting_left_out_is_one_paragraph_naming_it(tool, arguments, setting, tmp_path):
    done = run_module(tool, *arguments, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "MissingMandatoryValue" not in done.stderr
    name = tool.split(".")[1]
    assert f"error: missing setting: {setting}= is required (the settings of {tool}: conf/tools/{name}.yaml)" \
        in done.stderr
