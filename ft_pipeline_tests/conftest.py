import os

import pytest

# Tests never touch the user's stores: each test that needs a home gets one under tmp_path.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The config classes' defaults (ft_pipeline/config.py) are builtin:tiny's here, in this process and in every
# CLI, dagster and mlflow process a test starts (they inherit the environment): the tests train the tiny model.
os.environ["FT_PIPELINE_DEFAULTS"] = "configs/cpu_tiny.yaml"


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
