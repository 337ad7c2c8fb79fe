from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentrl.core.config import ConfigError, dump_config, load_config, read_yaml
from agentrl.experiment import ExperimentConfig

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
GPU_CONFIGS = sorted((REPO / "configs" / "gpu").rglob("*.yaml"))
EXPERIMENT_CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + GPU_CONFIGS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_quickstart_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(ExperimentConfig, QUICKSTART)
    assert cfg.model.name == "bundled:smollm2-135m-instruct"
    assert cfg.rollout.group_size == 4
    dumped = write(tmp_path, dump_config(cfg))
    assert load_config(ExperimentConfig, dumped) == cfg


def test_every_yaml_key_is_a_field() -> None:
    def check(node: object, values: dict) -> None:
        for key, value in values.items():
            got = getattr(node, key)
            if dataclasses.is_dataclass(got):
                check(got, value)
            else:
                assert got == value, key

    check(load_config(ExperimentConfig, QUICKSTART), read_yaml(QUICKSTART))


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_every_config_resolves_and_passes_the_pre_flight_checks(path: Path) -> None:
    from typer.testing import CliRunner

    from agentrl.cli.main import app
    from agentrl.train.recipe import check_config

    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 0, result.output
    recipe = check_config(load_config(ExperimentConfig, path), str(path))
    assert recipe.learning_rate > 0 and recipe.loss.max_length


def test_gpu_recipes_follow_wapo_table_3() -> None:
    gpu = REPO / "configs" / "gpu"
    for path in sorted(gpu.glob("*.yaml")):
        cfg = load_config(ExperimentConfig, path)
        assert cfg.finetune.mode == "lora" and (cfg.finetune.lora_r, cfg.finetune.lora_alpha) == (8, 32)
        assert cfg.trainer.learning_rate == 1e-5 and cfg.trainer.max_grad_norm == 1.0
        assert cfg.trainer.batch_size * cfg.rollout.group_size == 256 and cfg.rollout.group_size == 8
        assert cfg.rollout.backend == "vllm" and cfg.trainer.num_workers >= 1
        qa = cfg.env.id == "agentrl/SearchQA-v0"
        assert cfg.algorithm.max_response_length == (1024 if qa else 4096)
        if qa:
            assert cfg.env.max_turns == 10 and cfg.retriever.topk == 3 and cfg.retriever.kind == "http"
    presets = {load_config(ExperimentConfig, p).algorithm.preset for p in (gpu / "presets").glob("*.yaml")}
    from trainers.presets import PRESETS

    assert presets == set(PRESETS)


def test_misspelt_key_in_yaml_names_key_file_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "rollout:\n  group_szie: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(ExperimentConfig, path)
    message = str(err.value)
    assert "rollout.group_szie" in message
    assert str(path) in message
    assert "rollout.group_size" in message


def test_misspelt_section_suggests_section(tmp_path: Path) -> None:
    path = write(tmp_path, "rolout:\n  group_size: 8\n")
    with pytest.raises(ConfigError, match=r"'rolout'.*did you mean 'rollout'"):
        load_config(ExperimentConfig, path)


def test_misspelt_override_names_override_and_closest() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(ExperimentConfig, QUICKSTART, ["rollout.temprature=0.5"])
    message = str(err.value)
    assert "rollout.temprature=0.5" in message
    assert "rollout.temperature" in message


def test_overrides_are_typed_by_field() -> None:
    cfg = load_config(
        ExperimentConfig,
        QUICKSTART,
        ["rollout.group_size=8", "rollout.temperature=0.7", "model.name=123", "retriever.url=null"],
    )
    assert cfg.rollout.group_size == 8
    assert cfg.rollout.temperature == 0.7
    assert cfg.model.name == "123"
    assert cfg.retriever.url is None


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, "rollout:\n  group_size: four\n")
    with pytest.raises(ConfigError, match=r"'rollout.group_size' must be int, got str 'four'"):
        load_config(ExperimentConfig, path)
    with pytest.raises(ConfigError, match="must be int"):
        load_config(ExperimentConfig, QUICKSTART, ["rollout.group_size=2.5"])
    with pytest.raises(ConfigError, match="must be bool"):
        load_config(ExperimentConfig, QUICKSTART, ["output.tensorboard=3"])


def test_literal_choices_suggest_closest() -> None:
    with pytest.raises(ConfigError, match=r"one of \['local', 'ray'\].*did you mean 'ray'"):
        load_config(ExperimentConfig, QUICKSTART, ["rollout.executor=rey"])


def test_override_into_non_section_fails() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        load_config(ExperimentConfig, QUICKSTART, ["seed.value=1"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(ExperimentConfig, QUICKSTART, ["rollout.group_size"])


@dataclass
class Inner:
    path: str
    ratio: float = 0.5


@dataclass
class Outer:
    inner: Inner
    tags: list[str] = field(default_factory=list)


def test_missing_required_value(tmp_path: Path) -> None:
    path = write(tmp_path, "inner:\n  ratio: 0.1\n")
    with pytest.raises(ConfigError, match=r"missing required value 'inner.path'"):
        load_config(Outer, path)
    cfg = load_config(Outer, path, ["inner.path=/data/x", "tags=[a, b]"])
    assert cfg.inner.path == "/data/x" and cfg.tags == ["a", "b"]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ExperimentConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ExperimentConfig, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(ExperimentConfig, write(tmp_path, "- 1\n- 2\n"))


def test_a_repeated_section_or_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = "rollout:\n  group_size: 2\ntrainer:\n  steps: 3\nrollout:\n  temperature: 0.5\n"
    with pytest.raises(ConfigError, match=r"'rollout' appears twice \(lines 1 and 5\)"):
        load_config(ExperimentConfig, write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"'steps' appears twice \(lines 2 and 3\)"):
        load_config(ExperimentConfig, write(tmp_path, "trainer:\n  steps: 3\n  steps: 4\n"))


def test_a_config_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 9 is 0xe9\)"):
        load_config(ExperimentConfig, path)


def test_base_file_is_merged_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "quickstart.yaml").write_text(QUICKSTART.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "recipes").mkdir()
    parent = tmp_path / "recipes" / "parent.yaml"
    parent.write_text("base: ../quickstart.yaml\nname: parent\nrollout:\n  group_size: 2\n", encoding="utf-8")
    child = tmp_path / "recipes" / "child.yaml"
    child.write_text("base: parent.yaml\nrollout:\n  temperature: 0.5\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, child, ["trainer.steps=3"])
    plain = load_config(ExperimentConfig, QUICKSTART)
    assert cfg.name == "parent" and cfg.rollout.group_size == 2 and cfg.rollout.temperature == 0.5
    assert cfg.rollout.max_new_tokens == plain.rollout.max_new_tokens and cfg.model == plain.model
    assert cfg.trainer.steps == 3


def test_base_errors_name_the_files(tmp_path: Path) -> None:
    missing = write(tmp_path, "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml' does not exist \(the base of .*cfg\.yaml\)"):
        load_config(ExperimentConfig, missing)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"form a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(ExperimentConfig, tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="'base' must be the path of another config file"):
        load_config(ExperimentConfig, write(tmp_path, "base: [1]\n"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.minibatches=0", "trainer.minibatches=0: must be >= 1"),
        ("threads=0", "threads=0: must be >= 1 (or unset)"),
        ("trainer.learning_rate=-1", "trainer.learning_rate=-1.0: must be a finite number > 0"),
        ("trainer.learning_rate=.nan", "trainer.learning_rate=nan: must be a finite number > 0"),
        ("trainer.max_grad_norm=.inf", "trainer.max_grad_norm=inf: must be a finite number > 0"),
        ("trainer.warmup_ratio=2", "trainer.warmup_ratio=2.0: must be in [0, 1]"),
        ("rollout.top_p=0", "rollout.top_p=0.0: must be in (0, 1]"),
        ("rollout.top_p=5", "rollout.top_p=5.0: must be in (0, 1]"),
        ("rollout.top_k=-1", "rollout.top_k=-1: must be >= 0"),
        ("rollout.temperature=.nan", "rollout.temperature=nan: must be a finite number >= 0"),
        ("sft.steps=-4", "sft.steps=-4: must be >= 1"),
        ("sft.learning_rate=0", "sft.learning_rate=0.0: must be a finite number > 0"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_key(override: str, message: str) -> None:
    from agentrl.train.recipe import check_config

    cfg = load_config(ExperimentConfig, QUICKSTART, [override, "sft.enabled=true"])
    with pytest.raises(ConfigError) as caught:
        check_config(cfg, str(QUICKSTART))
    assert str(caught.value).startswith(f"{QUICKSTART}: {message}")


def test_evaluation_checks_the_sampling_ranges_but_not_the_trainers() -> None:
    from agentrl.train.recipe import check_config

    cfg = load_config(ExperimentConfig, QUICKSTART, ["trainer.minibatches=0", "sft.steps=-4"])
    assert check_config(cfg, "q.yaml", training=False).learning_rate > 0
    cfg = load_config(ExperimentConfig, QUICKSTART, ["threads=0"])
    with pytest.raises(ConfigError, match=r"^q.yaml: threads=0: must be >= 1"):
        check_config(cfg, "q.yaml", training=False)


def test_an_index_meta_json_that_is_a_list_is_a_config_error(tmp_path: Path) -> None:
    from agentrl.train.recipe import check_config

    (tmp_path / "meta.json").write_text("[]")
    overrides = ["retriever.kind=dense", f"retriever.index_dir={tmp_path}", "retriever.encoder=intfloat/e5"]
    cfg = load_config(ExperimentConfig, QUICKSTART, overrides)
    with pytest.raises(ConfigError, match=r"retriever.index_dir: .*meta.json must hold a JSON object"):
        check_config(cfg, "q.yaml")
