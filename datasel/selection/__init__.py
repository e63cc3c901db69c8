"""Selection policies, registered by name in :data:`POLICIES`."""

from datasel.selection.base import POLICIES, Policy, kept_count

__all__ = ["POLICIES", "Policy", "kept_count"]
