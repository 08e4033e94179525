"""The numeric-knob checks every command runs on its config before any work."""

import pytest
from omegaconf import OmegaConf

from recdata.errors import UserError
from runkit.config import check_config

GOOD = {
    "seed": 42,
    "train": {
        "batch_size": 128,
        "eval_batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "max_epochs": 50,
        "max_steps": -1,
        "patience": 5,
        "val_check_interval": 1.0,
        "limit_val_batches": 8,
        "num_workers": 0,
    },
    "student": {
        "hidden_size": 64,
        "num_blocks": 2,
        "num_heads": 2,
        "dropout": 0.2,
        "max_seq_len": 200,
    },
    "dataset": {"limit_data_rows": -1, "min_user_interactions": 3},
    "eval": {"ks": [5, 10, 20], "num_candidates": 20, "candidate_seed": 2024},
    "trainer": {"num_nodes": 1, "log_every_n_steps": 5, "gradient_clip_val": None},
}


def config_with(key: str, value):
    config = OmegaConf.create(GOOD)
    OmegaConf.update(config, key, value)
    return config


def test_the_shipped_defaults_pass_and_absent_keys_are_not_required():
    check_config(OmegaConf.create(GOOD))
    check_config(OmegaConf.create({"train": {"batch_size": 4}}))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.batch_size", 0, "an integer >= 1"),
        ("train.batch_size", 2.5, "an integer >= 1"),
        ("train.batch_size", True, "an integer >= 1"),
        ("train.eval_batch_size", -4, "an integer >= 1"),
        ("train.lr", 0, "a number in (0, inf)"),
        ("train.weight_decay", -0.1, "a number in [0, inf)"),
        ("train.max_epochs", 0, "an integer >= 1 or -1"),
        ("train.max_steps", -2, "an integer >= 1 or -1"),
        ("train.patience", -1, "an integer >= 0"),
        ("train.val_check_interval", 1.5, "a fraction in (0, 1] or an integer count >= 1"),
        ("train.limit_val_batches", 0, "a fraction in (0, 1] or an integer count >= 1"),
        ("train.num_workers", -1, "an integer >= 0"),
        ("student.hidden_size", "64", "an integer >= 1"),
        ("student.dropout", 1.0, "a number in [0, 1)"),
        ("student.max_seq_len", 0, "an integer >= 1"),
        ("dataset.limit_data_rows", 0, "an integer >= 1 or -1"),
        ("dataset.min_user_interactions", 2, "an integer >= 3"),
        ("eval.ks", [], "a non-empty list of integers >= 1"),
        ("eval.ks", [5, 0], "a non-empty list of integers >= 1"),
        ("eval.num_candidates", 1, "an integer >= 2 or 0"),
        ("teacher.student_mix_grid", [], "a non-empty list of numbers >= 0"),
        ("teacher.student_mix_grid", [0, -1], "a non-empty list of numbers >= 0"),
        ("seed", -1, "an integer >= 0"),
        ("trainer.gradient_clip_val", -1.0, "a number in [0, inf) or null"),
    ],
)
def test_each_knob_out_of_range_is_one_line(key, value, expected):
    with pytest.raises(UserError) as info:
        check_config(config_with(key, value))
    assert str(info.value) == f"{key} must be {expected}, got {value!r}"


def test_nan_learning_rate_is_refused():
    with pytest.raises(UserError, match=r"^train.lr must be a number in \(0, inf\), got nan$"):
        check_config(config_with("train.lr", float("nan")))


def test_hidden_size_must_split_into_heads():
    with pytest.raises(
        UserError, match=r"^student.hidden_size=64 must be divisible by student.num_heads=3$"
    ):
        check_config(config_with("student.num_heads", 3))


# -- the typed config tree -----------------------------------------------------------------------
def test_every_default_is_within_its_own_range_and_every_command_composes_and_passes():
    from runkit.config import check_instance, registered_schemas
    from runkit.entry import compose

    for schema in registered_schemas():
        if schema.group:  # the root's groups are MISSING until composed
            check_instance(schema.node(), f"{schema.group}.")
    for command in ("student", "teacher", "precompute", "distill", "eval_all"):
        check_config(compose(f"run_{command}", ["experiment=cpu_demo"]))


def test_an_earlier_key_name_is_moved_to_its_field_and_dropped():
    from runkit.config import canonical_config
    from runkit.entry import compose

    cfg = canonical_config(
        compose("run_teacher", ["teacher.distill_loss_type=cosine", "teacher.distill_lambda=0.5"])
    )
    assert cfg.teacher.imitation_loss_type == "cosine" and cfg.teacher.imitation_lambda == 0.5
    assert not any(key.startswith("distill_") for key in cfg.teacher)


def test_an_older_runs_saved_config_reads_its_earlier_names():
    from runkit.config import canonical_config

    saved = OmegaConf.create(
        {"teacher": {"distill_decay_type": "cosine", "distill_min_lambda": 0.1, "lora_r": 8}}
    )
    cfg = canonical_config(saved)
    assert OmegaConf.to_container(cfg.teacher) == {
        "imitation_decay_type": "cosine",
        "imitation_min_lambda": 0.1,
        "lora_r": 8,
    }


def test_a_retired_key_says_what_replaced_it():
    with pytest.raises(
        UserError, match=r"^distill.max_retries=3 is no longer used: .*distill.retry_budget"
    ):
        check_config(OmegaConf.create({"distill": {"max_retries": 3}}))


def test_cross_field_rules_of_a_group():
    with pytest.raises(
        UserError,
        match=r"^teacher.student_mix=auto ensembles .* set teacher.residual_student_state=false$",
    ):
        check_config(
            OmegaConf.create({"teacher": {"student_mix": "auto", "residual_student_state": True}})
        )
    with pytest.raises(
        UserError, match=r"^teacher.lora_r=6 must be a multiple of teacher.num_lora_experts=4"
    ):
        check_config(OmegaConf.create({"teacher": {"lora_r": 6, "num_lora_experts": 4}}))


def test_a_dataclass_built_in_code_gets_the_same_checks():
    from ilora.config import TeacherConfig

    with pytest.raises(
        UserError, match=r"^teacher.prompt_mode must be one of prefix, sequence, got 'chat'$"
    ):
        TeacherConfig(prompt_mode="chat")
