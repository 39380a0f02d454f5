"""The Celery worker: VGG16 feature extraction, the index and query tasks, and search."""
