import os
import warnings

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(autouse=True)
def _no_default_process_group():
    """Simulation needs a process without a default process group; fail loudly if a test leaks one."""
    import torch.distributed as dist

    yield
    if dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("a test left a default process group initialised")
