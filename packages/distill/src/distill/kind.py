"""The `sasrec-distilled` checkpoint kind (registered with runkit's kinds): a plain SASRec state
dict with the collaborative embedding distillation folded into its item table, naming the teacher
labels it was distilled from."""

from __future__ import annotations

from runkit.kinds import CheckpointKind

KIND = CheckpointKind(
    name="sasrec-distilled",
    requires={"distillation": "teacher_digest"},
    scorer="sasrec.kind:student_scorer",  # it loads and scores as a plain SASRec
)
