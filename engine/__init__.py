"""clipbot engine: jobs on Celery, blobs, safe image decoding and models. Knows nothing about chat."""
