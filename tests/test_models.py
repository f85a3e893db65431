import importlib.metadata
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
import timm
import torch

import timm_lap
from timm_lap.models import DEFAULT_LAP_ARCHS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "resnetv2_101"}


def _check_lap_model(arch):
    name = arch + "_lap"
    assert name in timm_lap.list_lap_models()
    model = timm.create_model(name, num_classes=3)
    tracker = timm_lap.get_tracker(model)
    assert tracker is not None and tracker.blocks
    base = timm.create_model(arch, num_classes=3)
    sd, base_sd = model.state_dict(), base.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in base_sd.items()}
    model.load_state_dict(base_sd)  # both ways, strict
    base.load_state_dict(sd)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    (out.logsumexp(1).mean() + tracker.transport_cost()).backward()
    assert len(tracker.per_block()) == len(tracker.blocks)
    assert model.pretrained_cfg["architecture"] == name


@pytest.mark.parametrize("arch", [a for a in DEFAULT_LAP_ARCHS if a not in HEAVY])
def test_lap_models_build_run_and_match_base_state_dict(arch):
    _check_lap_model(arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(HEAVY))
def test_heavy_lap_models(arch):
    _check_lap_model(arch)


def test_pretrained_configs_are_the_base_models():
    listed = timm.list_models("*_lap", pretrained=True)
    assert "resnet18_lap.a1_in1k" in listed and "resnet50_lap.a1_in1k" in listed
    cfg = timm.models.get_pretrained_cfg("resnet18_lap.a1_in1k")
    assert cfg.hf_hub_id == "timm/resnet18.a1_in1k"


def test_loading_a_base_checkpoint_file_gives_identical_outputs(tmp_path):
    base = timm.create_model("resnet18", num_classes=7)
    path = tmp_path / "resnet18.pth"
    torch.save(base.state_dict(), path)
    overlay = dict(file=str(path), num_classes=7)  # the file's classifier has 7 classes: keep it
    lap = timm.create_model("resnet18_lap", pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay)
    ref = timm.create_model("resnet18", pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(lap.fc.weight, base.fc.weight, rtol=0, atol=0)
    lap.eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(lap(x), ref(x))


def test_lap_kwargs_are_passed_to_the_tracker():
    model = timm.create_model("resnet18_lap", lap_p=1.0, lap_blocks=["layer4.*"])
    tracker = timm_lap.get_tracker(model)
    assert tracker.p == 1.0 and tracker.blocks == ["layer4.0", "layer4.1"]


def test_register_lap_model_for_another_arch():
    name = timm_lap.register_lap_model("resnet26t")
    assert name == "resnet26t_lap" and timm_lap.get_tracker(timm.create_model(name)) is not None
    with pytest.raises(ValueError, match="not a timm model name"):
        timm_lap.register_lap_model("no_such_net")


def test_metadata_declares_one_version_and_every_import():
    """The version is written once (timm_lap/__init__.py); third-party modules the package imports are declared."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and "version" not in project
    assert importlib.metadata.version("timm-lap") == timm_lap.__version__
    declared = " ".join(project["dependencies"] + sum(project["optional-dependencies"].values(), []))
    for distribution in ("torch", "torchvision", "timm", "numpy", "scipy", "tqdm", "pyyaml", "pillow"):
        assert distribution in declared
    assert "entry-points" not in project  # timm never read the timm.models group: the autoload registers the models


def _fresh_python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env={**os.environ, **env}, timeout=300
    )


@pytest.mark.slow
def test_autoload_registers_models_without_importing_timm_lap():
    done = _fresh_python(
        "import sys, timm; m = timm.create_model('resnet18_lap'); "
        "import timm_lap; print(timm_lap.get_tracker(m) is not None)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    off = _fresh_python("import timm; timm.create_model('resnet18_lap')", TIMM_LAP_AUTOLOAD="0")
    assert off.returncode != 0 and "Unknown model" in off.stderr


def test_autoload_is_cheap_and_imports_nothing_heavy():
    done = _fresh_python(
        "import sys, time; t = time.perf_counter(); import _timm_lap_autoload; "
        "print(time.perf_counter() - t); print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    elapsed, heavy = done.stdout.split("\n")[:2]
    assert float(elapsed) < 0.005
    assert heavy == "False False"
    startup = _fresh_python("import sys; print('_timm_lap_autoload' in sys.modules, 'torch' in sys.modules)")
    assert startup.stdout.strip() == "True False"  # the .pth hook ran at start-up and stayed light


def test_import_timm_lap_is_light_and_still_registers_the_models_in_either_order():
    light = _fresh_python("import sys, timm_lap; print('torch' in sys.modules)")
    assert light.returncode == 0 and light.stdout.strip() == "False", light.stderr
    for order in ("import timm_lap, timm", "import timm, timm_lap"):  # also with the start-up hook off
        done = _fresh_python(f"{order}; print(timm.is_model('resnet18_lap'))", TIMM_LAP_AUTOLOAD="0")
        assert done.returncode == 0 and done.stdout.strip() == "True", (order, done.stderr)


def test_every_public_name_resolves_on_first_use():
    import timm_lap

    for name in timm_lap.__all__:
        assert getattr(timm_lap, name).__name__ == name
    assert set(timm_lap.__all__) <= set(dir(timm_lap))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        timm_lap.nope  # noqa: B018


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripting_a_lap_model_gives_the_base_models_inference_graph():
    """torch.jit.script (timm's --torchscript, exports) compiles an untracked copy; the model stays tracked."""
    import copy

    base = timm.create_model("resnet10t", num_classes=3).eval()
    lap = timm.create_model("resnet10t_lap", num_classes=3)
    lap.load_state_dict(base.state_dict())
    lap.eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(lap)
    torch.testing.assert_close(scripted(x), base(x))
    torch.jit.script(lap.layer1[0])  # one tracked block alone
    assert timm_lap.get_tracker(lap) is not None
    lap.train()
    lap(x)
    assert timm_lap.get_tracker(lap).transport_cost().item() > 0
    clone = copy.deepcopy(lap)  # a copy scripts its own copy, not the original
    assert clone.__dict__["__prepare_scriptable__"].module is clone
    timm_lap.get_tracker(lap).remove()
    assert "__prepare_scriptable__" not in lap.__dict__
