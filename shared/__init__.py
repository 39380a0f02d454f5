"""Code both the API and the worker import: settings, Redis layout, images, schemas, errors.

Nothing in this package imports TensorFlow.
"""
