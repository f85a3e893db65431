"""timm_lap.recipes: the shipped YAML recipes load through timm-lap train's --config, and as flags."""
import pytest

from timm_lap import recipes
from timm_lap.cli.train_args import parse_args

# The demo's flags before its recipe became a file: the file must mean exactly this.
DIGITS_FLAGS = [
    "--dataset", "sklearn/digits", "--model", "resnet10t", "-b", "32", "--opt", "sgd", "--lr", "0.05",
    "--momentum", "0.9", "--weight-decay", "5e-4", "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0",
    "--scale", "0.7", "1.0", "--hflip", "0", "--color-jitter", "0", "--workers", "0", "--device", "cpu",
    "--log-interval", "1000", "--checkpoint-hist", "1",
]


def _settings(argv):
    args, _ = parse_args(argv)
    return {k: v for k, v in vars(args).items() if k != "config"}


def test_the_digits_recipe_file_means_the_demo_flags():
    assert "resnet10t_digits" in recipes.names()
    assert _settings(["-c", recipes.path("resnet10t_digits")]) == _settings(DIGITS_FLAGS)


def test_the_demo_recipe_is_the_digits_recipe_on_preact_flat9_at_28_px():
    assert "preact_flat9_digits" in recipes.names()
    model_flag = DIGITS_FLAGS.index("--model") + 1
    flat9 = [*DIGITS_FLAGS[:model_flag], "preact_flat9", "--img-size", "28", *DIGITS_FLAGS[model_flag + 1:]]
    assert _settings(["-c", recipes.path("preact_flat9_digits")]) == _settings(flat9)
    assert _settings(recipes.flags("preact_flat9_digits")) == _settings(flat9)


def test_flags_give_the_same_run_and_take_overrides():
    assert _settings(recipes.flags("resnet10t_digits")) == _settings(DIGITS_FLAGS)
    args, _ = parse_args(recipes.flags("resnet10t_digits", lr=0.1, dataset="torch/fashion_mnist"))
    assert args.lr == 0.1 and args.dataset == "torch/fashion_mnist" and args.model == "resnet10t"


def test_command_line_flags_override_the_recipe():
    args, _ = parse_args(["-c", recipes.path("resnet10t_digits"), "--lr", "0.2", "--epochs", "3"])
    assert args.lr == 0.2 and args.epochs == 3 and args.opt == "sgd"


def test_an_unknown_recipe_names_the_shipped_ones():
    shipped = "preact_flat9_digits, resnet10t_digits"
    with pytest.raises(ValueError, match=f"no timm-lap recipe 'nope'; shipped recipes: {shipped}"):
        recipes.path("nope")
