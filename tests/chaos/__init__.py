"""Fault drills: the stack under load while a real service dies and comes back.

Each drill prints what it did (`drill: …`) and what it checked (`check: …`); see
docs/operations.md, "Fault drills".
"""
