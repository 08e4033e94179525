"""The shared config tree: what each command's presets resolve to."""

import pytest

from runkit.entry import compose


def composed(command: str, *overrides: str):
    return compose(f"run_{command}", overrides)


def test_the_gpu_teacher_validates_several_times_a_run_so_model_selection_has_candidates():
    train = composed("teacher", "experiment=gpu_paper").train
    assert train.max_epochs * round(1 / train.val_check_interval) >= 4 and train.validate_at_start
    assert (
        composed(
            "teacher", "experiment=gpu_paper", "train.val_check_interval=0.5"
        ).train.val_check_interval
        == 0.5
    )


@pytest.mark.parametrize("command", ["student", "distill"])
def test_the_gpu_preset_leaves_the_students_one_validation_per_epoch(command):
    train = composed(command, "experiment=gpu_paper").train
    assert train.val_check_interval == 1.0 and train.max_epochs > 1
    assert (
        composed(command).train
        == composed(command, "experiment=gpu_paper", "dataset=ml-100k").train
    )


def test_without_an_experiment_the_teacher_preset_is_unchanged():
    assert (
        composed("teacher").train.val_check_interval == 1.0
        and composed("teacher").train.validate_at_start
    )


def test_the_cpu_demo_teacher_only_skips_validating_its_untrained_start():
    """Its own-query teacher starts from a random head that cannot win selection; everything
    else of the teacher preset stays, and the students keep theirs."""
    demo, preset = composed("teacher", "experiment=cpu_demo").train, composed("teacher").train
    assert (
        not demo.validate_at_start
        and not composed("teacher", "experiment=cpu_demo").teacher.residual_student_state
    )
    assert {**demo, "validate_at_start": True} == {**preset}
    assert composed("student", "experiment=cpu_demo").train == composed("student").train
