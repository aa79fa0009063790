"""Every shipped ``train`` config composes, converts to its typed dataclasses and instantiates: models (large
ones on the meta device), data options, trainer strategies, warm-up stages; overrides and mistakes."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from dnalm.config import CONF_DIR, compose, list_options
from dnalm.errors import ConfigError
from dnalm.models import hyena
from dnalm.models.blocks import count_parameters
from dnalm.models.families import family
from dnalm.recipes.train import build_model, model_config, parse
from dnalm.training.schedules import Stage, plan_stages

EXPERIMENTS = list_options("experiment")


#: HyenaDNA's released checkpoints (the presets but the ``tiny`` alias of ``tiny-1k``).
RELEASED = {name: cfg for name, cfg in hyena.PRESETS.items() if name != "tiny"}


def test_every_group_has_its_options():
    assert {"hyena_tiny", "hyena_small", "transformer_tiny", "transformer_small", "hyena/tiny-1k",
            "hyena/large-1m"} <= set(list_options("model"))
    assert set(list_options("data")) == {"prepared", "synthetic", "yeast"}
    assert set(list_options("trainer")) == {"cpu", "gpu", "ddp", "fsdp"}
    assert list_options("optim") == ["adamw"]
    assert {"synthetic/hyena_demo", "yeast/hyena_tiny", "yeast/hyena_small", "yeast/transformer_tiny",
            "yeast/transformer_small"} <= set(EXPERIMENTS)
    assert {f"hyenadna/{name}" for name in RELEASED} <= set(EXPERIMENTS)


def _longest(p) -> int:
    return max([p.data["length"], p.data.get("eval_length") or 0] + [s.length for s in p.top.stages])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose("train", [f"experiment={experiment}", f"data.prepared={tmp_path}"])
    p = parse(cfg)
    assert p.top.name and p.top.out == f"runs/{p.top.name}"
    model = build_model(p.model, _longest(p), device="meta")
    assert count_parameters(model) > 0 and all(t.is_meta for t in model.parameters())
    if p.top.stages:
        devices = p.trainer.devices if isinstance(p.trainer.devices, int) else 1
        stages = [Stage(s.length, s.batch_size, s.epochs, s.steps) for s in p.top.stages]
        plans = plan_stages(stages, devices, p.top.global_batch_size, lambda length: 10**9 // length)
        assert plans[-1].length == _longest(p) == model.config.l_max - 2
        assert all(pl.batch_size * pl.accumulate * devices == p.top.global_batch_size for pl in plans)
        assert [pl.length for pl in plans] == sorted(pl.length for pl in plans)


def test_hyenadna_experiments_reproduce_the_released_architectures(tmp_path):
    for name, preset in RELEASED.items():
        p = parse(compose("train", [f"experiment=hyenadna/{name}", f"data.prepared={tmp_path}"]))
        assert model_config(p.model, _longest(p)) == ("hyena", preset)
        assert (p.optim.lr, p.optim.weight_decay, p.optim.min_lr_ratio, p.optim.grad_clip) == (6e-4, 0.1, 0.1, 1.0)
        assert p.data["add_eos"] and p.data["n_weight"] == 1.0
    large = parse(compose("train", ["experiment=hyenadna/large-1m", f"data.prepared={tmp_path}"]))
    assert count_parameters(build_model(large.model, 1_000_000, device="meta")) == 6_550_528


@pytest.mark.parametrize("option", list_options("model"))
def test_model_option_lists_every_field_of_its_config(option):
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml"))
    cls = family(node["family"]).config_cls
    # besides the config's fields: the family and, optionally, a saved tokenizer to train with
    assert set(node) - {"family", "tokenizer"} == {f.name for f in dataclasses.fields(cls)}
    _, config = model_config(node, 512)
    if option.startswith("hyena/"):
        assert config == hyena.PRESETS[option.removeprefix("hyena/")]
    field = family(node["family"]).context_field
    if field is not None and node.get(field, 0) is None:
        assert getattr(config, field) == 514


@pytest.mark.parametrize("option", ["ddp", "fsdp", "gpu", "cpu"])
def test_trainer_options_compose_to_known_strategies(option):
    from lightning.pytorch.strategies import StrategyRegistry

    from dnalm.recipes.train import lightning_strategy

    p = parse(compose("train", [f"trainer={option}", "trainer.devices=4", "data.prepared=x"]))
    assert p.trainer.devices == 4
    strategy = lightning_strategy(p.trainer)
    if option == "fsdp":
        from dnalm.training.checkpoint import DirectoryFSDPStrategy

        assert isinstance(strategy, DirectoryFSDPStrategy) and strategy._state_dict_type == "full"
    else:
        assert strategy == "auto" or strategy in StrategyRegistry
    assert (p.trainer.strategy, p.trainer.accelerator) == {"ddp": ("ddp", "gpu"), "fsdp": ("fsdp", "gpu"),
                                                            "gpu": ("auto", "gpu"), "cpu": ("auto", "cpu")}[option]


def test_readme_override_example():
    p = parse(compose("train", ["experiment=yeast/hyena_tiny", "model.d_model=256", "model.n_layer=4",
                                "trainer.devices=1"]))
    family, config = model_config(p.model, 1024)
    assert (family, config.d_model, config.n_layer, config.l_max) == ("hyena", 256, 4, 1026)
    assert p.source.source.val == ["BK006947.3"] and p.source.source.test == ["BK006948.2", "BK006949.2"]
    assert p.source.source.fasta == "../shared/data/yeast_r64/GCA_000146045.2_R64_genomic.fna.gz"
    assert p.data["rc_aug"] and p.top.early_stopping.enabled and p.top.checkpoint.save_best
    assert p.trainer.devices == 1 and p.model["resid_dropout"] == 0.1


def test_demo_experiment_takes_a_prepared_directory():
    p = parse(compose("train", ["experiment=synthetic/hyena_demo", "data.prepared=/data/p", "out=demo/train"]))
    assert (p.source.prepared, p.top.out, p.trainer.accelerator) == ("/data/p", "demo/train", "cpu")
    default = parse(compose("train", ["experiment=synthetic/hyena_demo"]))
    assert default.source.prepared is None and default.source.synthetic["val"] == ["Chr2"]
    assert default.top.out == "runs/hyena_demo"


@pytest.mark.parametrize(("overrides", "message"), [
    (["+model.d_modl=3"], "unknown config key 'model.d_modl'"),
    (["+data.lenght=3"], "unknown config key 'data.lenght'"),
    (["+trainer.gpus=2"], "unknown config key 'trainer.gpus'"),
    (["+optim.momentum=0.9"], "unknown config key 'optim.momentum'"),
    (["+foo=1"], "unknown config key 'train.foo'"),
    (["model.d_model=wide"], "bad value for 'model.d_model'"),
    (["model.family=rwkv"], "model.family must be one of"),
    (["data=prepared"], "data.prepared"),
    (["logger=[csv,neptune]"], "unknown logger 'neptune'"),
    (["model=nosuch"], "unknown option 'nosuch' for config group 'model'"),
    (["experiment=nosuch"], "unknown option 'nosuch' for config group 'experiment'"),
])
def test_config_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        p = parse(compose("train", overrides))
        model_config(p.model, 512)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_stage_totals_match_the_schedule_length():
    p = parse(compose("train", ["experiment=hyenadna/small-32k", "data.prepared=x"]))
    stages = [Stage(s.length, s.batch_size, s.epochs, s.steps) for s in p.top.stages]
    plans = plan_stages(stages, 1, p.top.global_batch_size, lambda length: 10**9 // length)
    assert sum(pl.steps for pl in plans) == 20_000 and p.optim.warmup_steps == 200
    assert [pl.accumulate for pl in plans] == [4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize(("experiment", "name"), [("yeast/hyena_small", "hyena"), ("yeast/transformer_small",
                                                                                      "transformer")])
def test_d_inner_follows_d_model_unless_set(experiment, name, tmp_path):
    """dnalm train experiment=yeast/hyena_small model.d_model=64: the MLP is 4 x 64 wide, not the preset's 512."""
    p = parse(compose("train", [f"experiment={experiment}", f"data.prepared={tmp_path}", "model.d_model=64"]))
    model = build_model(p.model, _longest(p), device="meta")
    assert model.config.d_inner == 256 and model.backbone.layers[0].mlp.fc1.out_features == 256
    p = parse(compose("train", [f"experiment={experiment}", f"data.prepared={tmp_path}", "model.d_model=64",
                                "model.d_inner=100"]))
    assert model_config(p.model, _longest(p))[1].d_inner == 100
    cls = family(name).config_cls
    assert cls(d_model=48).d_inner == 192 and cls(d_model=48, d_inner=40).d_inner == 40


def test_matched_yeast_experiments_have_hyena_small_size(tmp_path):
    """The yeast experiments compared at matched size hold hyena_small's parameter count within 10 %."""

    def size(experiment: str) -> int:
        p = parse(compose("train", [f"experiment=yeast/{experiment}", f"data.prepared={tmp_path}"]))
        return count_parameters(build_model(p.model, _longest(p), device="meta"))

    reference = size("hyena_small")
    for experiment in ("transformer_small", "mamba_small", "caduceus_small", "stripedhyena_matched"):
        assert abs(size(experiment) / reference - 1) < 0.1, experiment
