"""Composing a command's config: mistakes in config files and interpolations are one-line ConfigErrors."""

from __future__ import annotations

import pytest

from dnalm.config import compose
from dnalm.errors import ConfigError


@pytest.mark.parametrize(("text", "message"), [
    ("seed: [unclosed\n", r"synth: not a valid YAML config: while parsing a flow sequence in \".*synth\.yaml\""),
    ("seed: !!python/object/apply:os.system ['echo ran']\n",
     r"synth: not a valid YAML config: could not determine a constructor for the tag"),
    ("\x00seed: 1\n", r"synth: not a valid YAML config: unacceptable character #x0000"),
])
def test_a_config_file_that_is_not_yaml(tmp_path, text, message):
    (tmp_path / "synth.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        compose("synth", [], str(tmp_path))


@pytest.mark.parametrize(("override", "message"), [
    ("out=${nope}", r"synth: bad value for 'out': Interpolation key 'nope' not found"),
    ("out=${oc.env:DNALM_TEST_UNSET_VARIABLE}",
     r"synth: bad value for 'out': .*Environment variable 'DNALM_TEST_UNSET_VARIABLE' not found"),
])
def test_interpolations_that_do_not_resolve(override, message, monkeypatch):
    monkeypatch.delenv("DNALM_TEST_UNSET_VARIABLE", raising=False)
    with pytest.raises(ConfigError, match=message):
        compose("synth", [override])
