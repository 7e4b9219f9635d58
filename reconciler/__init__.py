"""Mycelium Mesh: a declarative, GitOps-style, containerless orchestrator."""

__version__ = "0.1.0"
