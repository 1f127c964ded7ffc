"""The token-dataset errors are the errors module's classes wherever they are used (every error class of the
three packages is checked by tests/test_errors.py)."""

def test_the_dataset_errors_are_imported_from_the_errors_module():
    from meltok_runtime import errors
    from meltok_runtime.dataset import DatasetError, items, local_job, ray_job, reader, sources

    assert DatasetError is errors.DatasetError and reader.DatasetError is errors.DatasetError
    assert sources.SourceError is errors.SourceError and ray_job.ClusterError is errors.ClusterError
    assert items.ItemError is errors.ItemError and local_job.ItemError is errors.ItemError
    assert items.WorkerError is errors.WorkerError
