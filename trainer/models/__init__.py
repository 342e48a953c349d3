"""Base models: the embedded tiny pipelines, loading real ones, and what differs per family."""

from trainer.models.families import Family, family_for_pipeline
from trainer.models.loading import Base, load_base

__all__ = ["Base", "Family", "family_for_pipeline", "load_base"]
