import os
from pathlib import Path

import pytest

# Tests never touch the user's stores: each test that needs a home gets one under tmp_path.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The config classes' defaults (ft_pipeline/config.py) are builtin:tiny's here, in this process and in every
# CLI, dagster and mlflow process a test starts (they inherit the environment): the tests train the tiny model.
os.environ["FT_PIPELINE_DEFAULTS"] = "configs/cpu_tiny.yaml"
# Under pytest-xdist (`make test` runs two workers), each worker and the processes it starts get an equal share
# of the cores: two workers each training on every core would oversubscribe them.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

# Under xdist each module runs whole on one worker (its module fixtures are built once), and the modules that
# share one of these costly session fixtures all run on the same worker (it is built once a session).
SMOLLM2_TUNED_STEPS = 80  # the default run's (configs/cpu_smollm2.yaml): the model users export
SHARED_FIXTURES = {"smoke_home": {"test_forget_e2e", "test_orchestration", "test_ui", "test_flywheel_e2e"},
                   "smollm2_converted": {"test_gguf", "test_smollm2", "test_llamacpp"},
                   "smollm2_tuned": {"test_gguf", "test_llamacpp"}}


def _scope(module: str) -> str:
    return next((fixture for fixture, modules in SHARED_FIXTURES.items() if module in modules), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope`, where a scope is a module or the modules that share a fixture of SHARED_FIXTURES."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py"))

    return ByModule(config, log)


def _check_shared(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        for fixture in set(SHARED_FIXTURES) & set(item.fixturenames):
            if module not in SHARED_FIXTURES[fixture]:
                raise pytest.UsageError(f"{module} uses the session fixture {fixture}: add it to SHARED_FIXTURES "
                                        "in conftest.py, so that xdist runs it where that fixture is built")


def pytest_collection_modifyitems(config, items):
    _check_shared(items)
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
    from ft_pipeline.model.base_models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("base") / "builtin-tiny")


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """The packaged SmolLM2 converted from GGUF once a session (~45 s): test_gguf checks this conversion against
    an independent second one, test_smollm2 seeds its home's model cache with a copy of it."""
    from ft_pipeline.model.base_models import resolve_base_model

    return resolve_base_model("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2-base"))


@pytest.fixture(scope="session")
def smollm2_tuned(request, tmp_path_factory):
    """(base dir, adapter dir, merged dir): a LoRA on the converted SmolLM2 trained SMOLLM2_TUNED_STEPS steps on
    the demo train split with the default run's options, once a session; the GGUF parity tests (test_gguf's
    transformers parity, test_llamacpp) export it. FT_PIPELINE_TEST_TUNED_HOME=<a home where `make run` trained
    SmolLM2> tests that run's champion instead (its models/base/gguf/*, models/adapter and models/merged)."""
    from ft_pipeline_tests._gguf_parity import train_smollm2

    if home := os.environ.get("FT_PIPELINE_TEST_TUNED_HOME"):
        models = Path(home) / "models"
        return next((models / "base" / "gguf").glob("*/config.json")).parent, models / "adapter", models / "merged"
    base = request.getfixturevalue("smollm2_converted").path  # converted only when needed
    adapter, merged = train_smollm2(base, tmp_path_factory.mktemp("smollm2-tuned"), SMOLLM2_TUNED_STEPS)
    return base, adapter, merged


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory):
    """One run of the whole graph (configs/smoke.yaml on a copy of the demo drops, ~45 s) for the modules whose
    fixture starts from exactly that run (test_forget_e2e, test_orchestration, test_ui, test_flywheel_e2e). Each
    call puts the run's folder back as it was right after the run, at the same path (the Dagster and MLflow
    stores and the home's JSON files hold absolute paths), and returns (tmp, env, the run's CompletedProcess).
    Modules run one after another, so a module that changes the home changes its own copy; the next one starts
    from the run again."""
    import shutil
    import subprocess
    import sys

    from ft_pipeline.settings import REPO_ROOT
    from ft_pipeline_tests._env import demo_drops, isolated_env

    tmp = tmp_path_factory.mktemp("smoke")
    env = isolated_env(tmp, demo_drops(tmp))
    out = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset",
                          str(REPO_ROOT / "configs" / "smoke.yaml")], env=env, capture_output=True, text=True,
                         timeout=2400)  # ~45 s on a quiet laptop; 15 minutes and more on a loaded shared machine
    pristine = tmp_path_factory.mktemp("smoke-pristine") / "run"
    shutil.copytree(tmp, pristine, symlinks=True)

    def fresh():
        shutil.rmtree(tmp)
        shutil.copytree(pristine, tmp, symlinks=True)
        _close_pooled_connections()
        return tmp, dict(env), out

    return fresh


def _close_pooled_connections():
    """MLflow keeps an SQLAlchemy engine per tracking URI for the life of the process, its SQLite connections
    pooled: after the folder is put back, a pooled connection would still read and write the deleted database
    file. A disposed engine opens new connections, to the file now at that path."""
    import gc
    import sys

    if "sqlalchemy" not in sys.modules:
        return
    from sqlalchemy.engine import Engine

    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            obj.dispose()
