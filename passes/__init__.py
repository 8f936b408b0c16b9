"""Graph passes (``deploy.passes``): plain functions that transform a model and report what changed.

This package imports nothing else of the project's.
"""
