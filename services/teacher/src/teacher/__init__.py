"""`teacher-service`: the iLoRA teacher behind BentoML (see `teacher.service`).

`bentoml serve teacher` and `bentoml serve teacher.service:TeacherService` both find the service.
"""

from teacher.service import TeacherService

__all__ = ["TeacherService"]
