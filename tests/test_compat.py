"""timm_lap.compat: the module paths from before the subpackages import the very same module objects."""
import importlib
import subprocess
import sys

import pytest

from timm_lap.compat import MOVED


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_path_is_the_new_module_itself(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_a_setting_changed_through_the_old_path_reaches_the_new_module():
    from timm_lap import config
    from timm_lap.ops import switches

    with config.grouping(123):
        assert switches.grouping_budget() == 123


def test_old_names_still_import():
    from timm_lap.analysis import energy_profile  # a package now: the old names are re-exported
    from timm_lap.data import class_balanced_subset
    from timm_lap.grouped_energy import grouped_energies
    from timm_lap.train import train

    assert all(callable(f) for f in (energy_profile, class_balanced_subset, grouped_energies, train))


def test_python_dash_m_on_the_old_path_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "timm_lap.train", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage: timm-lap train" in result.stdout and "--lap" in result.stdout


def test_unknown_submodules_are_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("timm_lap.no_such_module")
