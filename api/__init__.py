"""The HTTP API: validates requests cheaply, stores uploads, enqueues tasks, serves results.

It never imports TensorFlow and never decodes a full image.
"""
