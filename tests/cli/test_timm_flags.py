"""Every flag of timm's ``train.py`` (the list in ``tests/fixtures/timm_train_flags.json``) is accepted by
``timm-lap train`` or rejected by name with a reason."""
from __future__ import annotations

import json
import os

import pytest

from timm_lap.cli.train_args import TIMM_FLAGS_NOT_SUPPORTED, build_parser, parse_args

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "timm_train_flags.json")


def _timm_flags() -> list[str]:
    with open(FIXTURE) as f:
        return json.load(f)["flags"]


def test_fixture_names_its_timm_version():
    with open(FIXTURE) as f:
        data = json.load(f)
    assert data["timm_version"] and len(data["commit"]) == 40 and len(data["flags"]) > 150


def test_every_timm_flag_is_accepted_or_rejected_with_a_reason():
    accepted = set(build_parser()._option_string_actions)
    unaccounted = [f for f in _timm_flags() if f not in accepted and f not in TIMM_FLAGS_NOT_SUPPORTED]
    assert unaccounted == []
    both = [f for f in _timm_flags() if f in accepted and f in TIMM_FLAGS_NOT_SUPPORTED]
    assert both == []
    assert all(len(reason) > 20 for reason in TIMM_FLAGS_NOT_SUPPORTED.values())


@pytest.mark.parametrize("flag", sorted(TIMM_FLAGS_NOT_SUPPORTED))
def test_rejected_flag_error_gives_the_reason(flag, capsys):
    with pytest.raises(SystemExit):
        parse_args([flag])
    err = capsys.readouterr().err
    assert flag in err and TIMM_FLAGS_NOT_SUPPORTED[flag][:30] in err
