import os
import warnings

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
# Helper modules that assert for the tests calling them: pytest explains their failures too.
pytest.register_assert_rewrite("sabotage", "titan_reference")
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(autouse=True)
def _no_default_process_group():
    """Simulation needs a process without a default process group; fail loudly if a test leaks
    one, or leaves ``sys.excepthook`` wrapped (``init_process_group`` prefixes tracebacks with
    ``[rankN]:`` and never unwraps it: a later test reading a traceback would fail instead)."""
    import sys

    import torch.distributed as dist

    hook = sys.excepthook
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("a test left a default process group initialised")
    if sys.excepthook is not hook:
        sys.excepthook = hook
        pytest.fail("a test left sys.excepthook changed (init_process_group without fake_world?)")


@pytest.fixture
def rank1_of_2():
    """This process as rank 1 of a 2-rank fake world, and its 1-D cpu mesh. Through dcpviz's
    own ``fake_world``: ``init_process_group`` wraps ``sys.excepthook`` in a ``[rank1]:``
    prefixer that ``destroy_process_group`` leaves behind, and later tests read tracebacks."""
    from torch.distributed.device_mesh import init_device_mesh

    from dcpviz.engine.job.world import fake_world

    with fake_world(1, 2):
        yield init_device_mesh("cpu", (2,))


# -- real runs (tests/test_run_*.py): each 4-process save runs once per session ----------------
REAL_SCENARIOS = {
    "hsdp": dict(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp"),
    "tp+fsdp": dict(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
}
_REAL_SAVES: dict = {}


@pytest.fixture(scope="session")
def real_save(tmp_path_factory):
    """real_save(name) -> (scenario, run_save result, checkpoint dir), cached for the session."""
    import dcpviz

    def get(name: str):
        if name not in _REAL_SAVES:
            sc = dcpviz.Scenario(**REAL_SCENARIOS[name])
            ckpt = tmp_path_factory.mktemp(name.replace("+", "_")) / "ckpt"
            res = dcpviz.run_save(sc, ckpt, timeout=240)
            assert res.ok, res.errors
            _REAL_SAVES[name] = (sc, res, ckpt)
        return _REAL_SAVES[name]

    return get
