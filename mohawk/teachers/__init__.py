"""Teachers: Hugging Face causal LMs seen through one adapter interface (see base.py), one file per family."""

from mohawk.teachers.base import Captures, TeacherAdapter
from mohawk.teachers.load import ADAPTERS, DEFAULT_TEACHER, adapter_for, load_teacher

__all__ = ["ADAPTERS", "DEFAULT_TEACHER", "Captures", "TeacherAdapter", "adapter_for", "load_teacher"]
