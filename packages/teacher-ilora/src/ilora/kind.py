"""The `ilora-teacher` checkpoint kind (registered with runkit's kinds): only what the teacher
trained, naming its base LLM (with a digest) and the student checkpoint it was built on."""

from __future__ import annotations

from pathlib import Path

from runkit.kinds import CheckpointKind

KIND = CheckpointKind(
    name="ilora-teacher",
    requires={"base_llm": "digest", "student_checkpoint": "weights_sha256"},
    scorer="ilora.kind:teacher_scorer",
    expensive=True,
)


def teacher_scorer(path: Path, dataset, *, device: str, cache_dir=None, precision: str = "auto"):
    """Scores of a trained teacher, for eval-all (validated against the data, student and LLM)."""
    from ilora.checkpoint import load_teacher

    teacher, _ = load_teacher(
        path, dataset, device=device, precision=precision, cache_dir=cache_dir
    )
    return lambda batch: teacher(batch["history"].to(device)).float().cpu()
