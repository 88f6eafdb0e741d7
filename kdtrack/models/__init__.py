"""Student and teacher networks (pure PyTorch + torchvision; nothing is ever downloaded).

- ``build_student(cfg: ModelConfig) -> Student``: images (B, 3, H, W) RGB [0, 1]
  -> {"heatmap", "size", "offset", "embedding"} at stride 4 (see ``student``).
- ``build_teacher(cfg: TeacherConfig, num_classes=0) -> ReIDNet`` and
  ``freeze_teacher(model)``; KD soft targets in ``teacher_targets``; the
  teacher's training losses in ``reid_losses``.
"""

from kdtrack.models.reid import ReIDNet, build_teacher, freeze_teacher, is_frozen, teacher_feature_dim
from kdtrack.models.student import OUTPUT_KEYS, Student, build_student
from kdtrack.models.teacher_targets import crop_boxes, embed_crops, select_kept, teacher_embeddings
from kdtrack.models.weights import CheckpointMismatchError, load_weights, read_state_dict

__all__ = [
    "OUTPUT_KEYS",
    "CheckpointMismatchError",
    "ReIDNet",
    "Student",
    "build_student",
    "build_teacher",
    "crop_boxes",
    "embed_crops",
    "freeze_teacher",
    "is_frozen",
    "load_weights",
    "read_state_dict",
    "select_kept",
    "teacher_embeddings",
    "teacher_feature_dim",
]
