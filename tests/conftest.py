"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole run (module-scoped model fixtures included): on a shared
    2-core machine, OpenMP threads spinning against each other (and against the subprocesses that
    some tests start) cost up to ~10x for models this small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unregister():
    """A list of dataset names that the test registers: popped from DatasetCatalog and
    MetadataCatalog afterwards."""
    from resnet_backbones.data import DatasetCatalog, MetadataCatalog

    names = []
    yield names
    for name in names:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)
