"""A local simulator of the KashFlow REST API v2; see README.md beside this file."""

from .app import KashFlowApp

__all__ = ["KashFlowApp"]
