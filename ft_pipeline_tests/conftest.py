import os

import pytest

# Tests never touch the user's stores: each test that needs a home gets one under tmp_path.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from ft_pipeline.core.base_models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("base") / "builtin-tiny")
