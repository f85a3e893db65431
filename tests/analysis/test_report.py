"""The markdown report of timm-lap analyze, from a result dict alone (no model, no data)."""
import math

from timm_lap.analysis.report import (
    CHECKPOINT_NOTE,
    efficiency_table,
    energy_table,
    format_value,
    render_report,
    stage_label,
)


def _result(**changes):
    result = {
        "model": "resnet10t", "num_params": 4_900_000, "num_classes": 10, "checkpoint_info": "`w.pth` (state_dict)",
        "dataset": "sklearn/digits", "split": "validation", "num_samples": 450, "input_size": (1, 32, 32),
        "top1": 12.345, "total_transport": 1.5, "energy_profile": {"layer1.0": 1.0, "layer2.0": 0.5},
        "inherited": [], "p": 2.0, "energy_samples": 128,
        "transport_efficiency": [{"stage": ["layer1.0", "layer1.1"], "blocks": 2, "w2_squared": 0.1,
                                  "kinetic": 0.2, "efficiency": math.nan, "n": 200}],
        "trajectories": {"stage": ["layer1.0", "layer1.1"], "points": 256, "explained_variance_ratio": [0.5, 0.25]},
    }
    return {**result, **changes}


def test_report_sections_and_numbers():
    text = render_report(_result())
    assert text.startswith("# timm-lap analyze: resnet10t\n") and text.endswith("![trajectories](trajectories.png)\n")
    assert "| model | `resnet10t` (4.90M parameters, 10 classes) |" in text
    assert "| top-1 accuracy | 12.35 % (450 samples) |" in text
    assert "| 0 | `layer1.0` | 1 | 66.7 % |" in text and "| 1 | `layer2.0` | 0.5 | 33.3 % |" in text
    assert "| `layer1.0` .. `layer1.1` | 2 | 0.1 | 0.2 | nan | 200 |" in text
    assert "256 points through the longest same-width stage, `layer1.0` .. `layer1.1` (2 blocks)" in text
    assert "explained variance 50%, 25%" in text and "Taken from the checkpoint" not in text


def test_report_without_stage_and_with_inherited_settings():
    text = render_report(_result(transport_efficiency=[], trajectories=None, inherited=["dataset", "split"],
                                 dataset="", energy_profile={"layer1.0": 0.0}, total_transport=0.0))
    assert "Taken from the checkpoint's training arguments: dataset, split." in text
    assert "`ImageFolder`" in text and "| 0 | `layer1.0` | 0 | - |" in text
    assert "The model has no same-width stage" in text and "No same-width stage: no trajectories to draw." in text


def test_pieces():
    assert format_value(math.nan) == "nan" and format_value(1 / 3) == "0.333333"
    assert stage_label(["a"]) == "`a`" and stage_label(["a", "b", "c"], code=False) == "a .. c (3 blocks)"
    assert stage_label(["a", "b"], count=False) == "`a` .. `b`"
    assert energy_table({})[:2] == ["| # | block | energy | share |", "|---:|---|---:|---:|"]
    assert len(efficiency_table([])) == 2


def test_total_transport_says_what_it_measures_and_training_checkpoints_get_the_last_vs_best_note():
    text = render_report(_result())
    assert ("| total transport | 1.5 (sum of 2 block energies, eval mode, mean over 128 samples of `validation`) |"
            in text)
    assert CHECKPOINT_NOTE not in text  # a state_dict file: no epoch
    assert CHECKPOINT_NOTE in render_report(_result(checkpoint_epoch=13))
    assert "`last.pth.tar`" in CHECKPOINT_NOTE and "`model_best.pth.tar`" in CHECKPOINT_NOTE


def test_single_block_stages_are_noted():
    one = {"stage": ["layer1.0"], "blocks": 1, "w2_squared": 0.1, "kinetic": 0.1, "efficiency": 1.0, "n": 200}
    two = {**one, "stage": ["layer2.0", "layer2.1"], "blocks": 2, "efficiency": 0.5}
    text = render_report(_result(transport_efficiency=[one], trajectories={**_result()["trajectories"],
                                                                           "stage": ["layer1.0"]}))
    assert "Note: `layer1.0` is a single block:" in text
    assert "almost by construction, whatever the network learned" in text
    assert "Note: the longest same-width stage is a single block" in text
    text = render_report(_result(transport_efficiency=[one, {**one, "stage": ["layer3.0"]}, two]))
    assert "Note: `layer1.0`, `layer3.0` are each a single block:" in text
    plain = render_report(_result(transport_efficiency=[two]))
    assert "single block" not in plain
    assert "hollow circle = stage input (start), cross = stage output (end)" in plain


def test_the_trajectory_stage_says_its_share_of_the_transport():
    text = render_report(_result())  # layer1.0 .. layer1.1 over a profile where only layer1.0 is measured
    assert "`layer1.0` .. `layer1.1` (2 blocks) (it carries 66.7% of the total transport)" in text
    assert "an inset shows them enlarged" in text
    zero = render_report(_result(energy_profile={"layer1.0": 0.0}, total_transport=0.0))
    assert "carries" not in zero


def test_model_best_is_told_apart_from_the_final_model_and_model_kwargs_show():
    best = render_report(_result(checkpoint="run/model_best.pth.tar", checkpoint_epoch=9))
    assert "This is `model_best.pth.tar`, the model of epoch 9: the run's final model only when" in best
    last = render_report(_result(checkpoint="run/last.pth.tar", checkpoint_epoch=14))
    assert CHECKPOINT_NOTE in last and "This is `model_best.pth.tar`" not in last
    shaped = render_report(_result(model="preact_flat9", model_kwargs={"width": 16}))
    assert "| model | `preact_flat9` with `width=16` (4.90M parameters, 10 classes) |" in shaped
