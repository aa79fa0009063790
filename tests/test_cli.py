"""The CLI edge: help, composed configs, copies of shipped configs and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnalm.cli import COMMANDS, available, main, run
from dnalm.config import CONF_DIR, config_name
from dnalm.errors import ConfigError


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_help_lists_every_available_command_with_one_line(capsys):
    code, out, _ = _main(["--help"], capsys)
    assert code == 0
    for name in available():
        lines = [line for line in out.splitlines() if line.strip().startswith(name + " ")]
        assert lines, f"{name} missing from --help"
        assert COMMANDS[name].help in lines[0]
    assert "config show" in out and "cp config" in out


def test_every_available_command_has_a_config_that_composes():
    from dnalm.config import compose

    for name in available():
        assert (CONF_DIR / f"{config_name(name)}.yaml").is_file(), name
        cfg = compose(name, [])
        assert cfg is not None


def test_command_help_shows_groups(capsys):
    name = "synth"
    code, out, _ = _main([name, "--help"], capsys)
    assert code == 0
    assert f"dnalm {name}" in out and "config show" in out


def test_command_help_shows_usage_groups_and_documented_keys(capsys):
    code, out, _ = _main(["train", "--help"], capsys)
    assert code == 0
    assert "dnalm train [experiment=NAME] [data.prepared=DIR]" in out  # the config's leading comment
    assert "  trainer (default: cpu): cpu, ddp, fsdp, gpu" in out
    keys = out.split("keys (key=value; default, then meaning):\n", 1)[1]
    assert "  seed: 0 " in keys and "# model initialisation, data order and dropout masks" in keys
    assert "- model:" not in out and "_self_" not in out  # the defaults list is shown as groups only


def test_help_piped_into_a_reader_that_stops_is_not_an_error():
    proc = subprocess.run(f"{sys.executable} -m dnalm.cli train --help | head -1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("usage: dnalm train") and "Traceback" not in proc.stderr


def test_config_show_applies_overrides(capsys):
    code, out, _ = _main(["config", "show", "synth", "seed=123"], capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["seed"] == 123


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["no-such-command"], "unknown command 'no-such-command'"),
        (["config", "show", "synth", "no_such_key=1"], "no_such_key"),
        (["synth", "--bogus"], "unknown option '--bogus'"),
        (["cp", "config", "no/such/config", "x.yaml"], "no shipped config"),
        (["config", "show", "train", "model=nope"],
         "unknown option 'nope' for config group 'model' of 'train' (choose from: "),
        (["config", "show", "finetune", "task=nope"],
         "(choose from: classification, gue_prom_core_all, gue_prom_core_all_dnabert2, gue_tf0,"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    code, out, err = _main(argv, capsys)
    assert code == 2
    assert err.startswith("dnalm: error:") and needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_wrong_type_override_is_one_line(tmp_path, capsys):
    code, _, err = _main(["synth", f"out={tmp_path / 'g'}", "seed=not_a_number"], capsys)
    assert code == 2
    assert "seed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_cp_config_copies_and_config_dir_uses_the_copy(tmp_path, capsys):
    dest = tmp_path / "myconf"
    dest.mkdir()
    run(["cp", "config", "synth", str(dest / "synth.yaml")])
    copied = yaml.safe_load((dest / "synth.yaml").read_text())
    assert copied == yaml.safe_load((CONF_DIR / "synth.yaml").read_text())
    text = (dest / "synth.yaml").read_text().replace(f"seed: {copied['seed']}", "seed: 4242")
    (dest / "synth.yaml").write_text(text)
    capsys.readouterr()
    code, out, _ = _main(["config", "show", "synth", "--config-dir", str(dest)], capsys)
    assert code == 0 and yaml.safe_load(out)["seed"] == 4242


def test_unknown_command_raises_config_error():
    with pytest.raises(ConfigError):
        run(["frobnicate"])


def test_console_script_help_is_fast_and_works():
    proc = subprocess.run([sys.executable, "-m", "dnalm.cli", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent)
    assert proc.returncode == 0 and "commands:" in proc.stdout


@pytest.mark.parametrize("command", ["predict", "embed", "generate", "score-variants"])
def test_every_command_writes_to_out_and_output_still_works(command, capsys):
    """One spelling of the output path across commands (out=, as train, prepare, benchmark, plot and report);
    the older output= of the inference commands is read as out=."""
    from dnalm.config import compose

    assert compose(command, ["out=a.x"]).out == "a.x"
    assert compose(command, ["output=b.x"]).out == "b.x"
    assert "output" not in compose(command, [])
    code, out, _ = _main(["config", "show", command, "output=c.x"], capsys)
    assert code == 0 and yaml.safe_load(out)["out"] == "c.x"
    for name in available():
        cfg = compose(name, [])
        assert "output" not in cfg, f"{name} still names its output 'output'"
