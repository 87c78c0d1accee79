"""The load verdict agrees with real DCP (issue 19, items 4 and 5): each case is saved for real
(dcp.save into a tmp dir), loaded for real (dcp.load, one process), and simulated; the verdict,
the problems, the checks and the exit codes must say what the real load did."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from load_cases import compiled_mlp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemWriter

import dcpviz
from dcpviz.analysis.checks import failing
from dcpviz.engine.checkpoint.reader import read_metadata
from dcpviz.engine.job.models import MLP

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def real_load(state_dict, path, planner=None):
    """dcp.load in this one process; the exception DCP raised (its root cause), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dcp.load(state_dict, checkpoint_id=path, planner=planner)
        except BaseException as exc:  # CheckpointException is not an Exception
            return exc
    return None


def real_save(state_dict, path, **writer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state_dict, storage_writer=FileSystemWriter(path, **writer))
    return path


def check_exit(result, tmp_path, name="l.json") -> int:
    from dcpviz.cli import main

    return main(["check", str(result.to_json(tmp_path / name)), "--json"])


# -- item 4: a partial load that leaves loadable data unread is data loss ----------------------
@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return real_save(MLP().state_dict(), tmp_path_factory.mktemp("mlp"))


def test_partial_load_past_a_compile_prefix_is_data_loss(mlp_ckpt, tmp_path, capsys):
    """Before: 'it loads, but a _orig_mod. prefix' and `dcpviz check` exit 0. Real dcp.load with
    allow_partial_load=True restores none of the compiled model's tensors."""
    torch.manual_seed(1)
    target = compiled_mlp()
    before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    sd = target.state_dict()
    assert real_load(sd, mlp_ckpt, DefaultLoadPlanner(allow_partial_load=True)) is None
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not one tensor restored

    load = dcpviz.simulate_load(
        mlp_ckpt,
        dcpviz.Scenario(model=compiled_mlp, world_size=2, recipe="fsdp"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    v = load.verdict
    assert v.loads and not v.clean and v.losing
    n = len({w.fqn for w in load.trace.wanted})
    assert (
        f"restores 0 of {n} target keys" in v.line
        and "loses data" in v.line
        and "_orig_mod." in v.line
    )
    assert not v.line.startswith("It loads")
    assert set(load.problems["severity"]) == {"loses"}
    checks = load.checks
    assert failing(checks)
    assert {"partial-load-leaves-data-unread", "unread-keys"} <= set(
        checks[checks.severity == "data-loss"].check
    )
    assert check_exit(load, tmp_path) == 1
    capsys.readouterr()


def test_partial_load_of_keys_with_no_source_stays_a_warning(mlp_ckpt, tmp_path, capsys):
    """allow_partial_load for a module the checkpoint never had, every checkpoint key read:
    nothing loadable is left behind, so no data loss (real dcp.load restores every saved key)."""

    class Bigger(MLP):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(3, 2)

    torch.manual_seed(1)
    target = Bigger()
    sd = target.state_dict()
    assert real_load(sd, mlp_ckpt, DefaultLoadPlanner(allow_partial_load=True)) is None
    torch.manual_seed(0)
    saved = MLP().state_dict()
    assert torch.equal(target.state_dict()["fc1.weight"], saved["fc1.weight"])

    load = dcpviz.simulate_load(
        mlp_ckpt,
        dcpviz.Scenario(model=Bigger, world_size=2, recipe="fsdp"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    assert load.verdict.clean and not load.verdict.losing
    assert set(load.problems["severity"]) == {"silent"}
    assert not failing(load.checks) and "partial-load-hides-missing" in set(load.checks.check)
    assert check_exit(load, tmp_path) == 0
    capsys.readouterr()


def test_partial_load_past_a_rename_is_data_loss_and_names_the_source(mlp_ckpt, tmp_path, capsys):
    """The LayerNorm renamed (norm -> ln) under allow_partial_load: real dcp.load leaves ln at its
    initial values while the checkpoint's norm.* are read by nobody."""
    from load_cases import RenamedNormMLP

    torch.manual_seed(1)
    target = RenamedNormMLP()
    ln = target.ln.weight.detach().clone()
    assert (
        real_load(target.state_dict(), mlp_ckpt, DefaultLoadPlanner(allow_partial_load=True))
        is None
    )
    assert torch.equal(target.ln.weight, ln)

    load = dcpviz.simulate_load(
        mlp_ckpt,
        dcpviz.Scenario(model=RenamedNormMLP, world_size=2, recipe="fsdp"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    assert load.verdict.loads and not load.verdict.clean
    lost = load.checks[load.checks.check == "partial-load-leaves-data-unread"].set_index("fqn")
    assert set(lost.index) == {"ln.weight", "ln.bias"} and set(lost.severity) == {"data-loss"}
    assert "norm.weight" in lost.loc["ln.weight", "message"]
    assert check_exit(load, tmp_path) == 1
    capsys.readouterr()


def test_a_skipped_module_with_only_optimizer_state_unread_is_no_data_loss(tmp_path, capsys):
    """A model-only target with a new module, from a checkpoint that also holds optimizer state
    of that module's shape: the moments cannot fill a parameter, so nothing loadable is left
    behind (a warning, not data loss)."""

    class Bigger(MLP):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(3, 2, bias=False)

    torch.manual_seed(0)
    ck = real_save(
        {**MLP().state_dict(), "optim.state.extra.weight.exp_avg": torch.zeros(2, 3)},
        tmp_path / "ck",
    )
    load = dcpviz.simulate_load(
        ck,
        dcpviz.Scenario(model=Bigger, world_size=2, recipe="fsdp"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    assert load.verdict.clean, load.verdict.line
    assert not failing(load.checks), load.checks[["severity", "check", "fqn"]]
    assert {"partial-load-hides-missing", "optimizer-state-not-read"} <= set(load.checks.check)
    capsys.readouterr()


def test_declared_unused_keys_are_not_data_loss(mlp_ckpt, tmp_path, capsys):
    """The same compiled target, with every checkpoint key declared unused on purpose: no
    surface calls it data loss or lists the declared keys as unread."""
    load = dcpviz.simulate_load(
        mlp_ckpt,
        dcpviz.Scenario(model=compiled_mlp, world_size=2, recipe="fsdp"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
        expected_unused=["*"],
    )
    assert load.verdict.clean and "left unread on purpose" in load.verdict.line
    assert "loses" not in set(load.problems["severity"])
    assert "unread-keys" not in set(load.checks.check) and not failing(load.checks)
    assert check_exit(load, tmp_path) == 0
    capsys.readouterr()


def test_expected_unused_reaches_checks_report_and_cli(mlp_ckpt, tmp_path, capsys):
    """A strict load into a model without the LayerNorm: norm.* is read by no rank. Declared
    unused, it is no finding in checks (before: still an 'unread-keys' warning), nor in the
    report's checks, nor in `dcpviz check` of the saved load trace."""
    from dcpviz.cli import main

    class NoNorm(MLP):
        def __init__(self) -> None:
            super().__init__()
            del self.norm

        def fsdp_units(self):
            return [self.fc1, self.fc2]

    scenario = dcpviz.Scenario(model=NoNorm, world_size=2, recipe="fsdp")
    plain = dcpviz.simulate_load(mlp_ckpt, scenario)
    assert {"norm.weight", "norm.bias"} <= set(plain.checks.fqn)
    declared = dcpviz.simulate_load(mlp_ckpt, scenario, expected_unused=["norm.*"])
    assert not {"norm.weight", "norm.bias"} & set(declared.checks.fqn)
    report = dcpviz.report(declared, tmp_path / "r.html").read_text()
    assert "unread-keys" not in report and "plans cleanly" in report
    assert "plans cleanly" not in dcpviz.report(plain, tmp_path / "p.html").read_text()
    path = declared.to_json(tmp_path / "d.json")
    assert main(["check", str(path), "--json"]) == 0
    assert '"norm.weight"' not in capsys.readouterr().out
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "plans cleanly" in shown and "left unread on purpose" in shown


# -- item 5: bytes versus tensors --------------------------------------------------------------
class EpochTensor(MLP):
    """Where the checkpoint holds a Python value ('progress._extra_state.epoch', an int) this
    target holds a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.progress.get_extra_state = lambda: {"epoch": torch.full((2,), -1.0), "note": "n"}


class IntStep(MLP):
    """Where the checkpoint holds a tensor ('progress.step') this target holds a plain int."""

    def __init__(self) -> None:
        super().__init__()
        self._register_state_dict_hook(IntStep._int_step)

    @staticmethod
    def _int_step(module, state_dict, prefix, local_metadata):
        state_dict[prefix + "progress.step"] = 7
        return state_dict


def test_bytes_where_the_target_holds_a_tensor_loads_and_loses_it(mlp_ckpt, tmp_path, capsys):
    """Real dcp.load raises nothing, replaces the dict entry with the saved int and never writes
    the tensor. Before: the verdict said DCP rejects the key."""
    sd = EpochTensor().state_dict()
    tensor = sd["progress._extra_state"]["epoch"]
    assert real_load(sd, mlp_ckpt) is None
    assert sd["progress._extra_state"]["epoch"] == 0  # the saved Python value took the entry
    assert torch.equal(tensor, torch.full((2,), -1.0))  # the tensor itself was never written

    load = dcpviz.simulate_load(
        mlp_ckpt, dcpviz.Scenario(model=EpochTensor, world_size=2, recipe="fsdp")
    )
    v = load.verdict
    assert v.loads and not v.breaking and not v.clean
    assert any("never written" in s and "progress._extra_state.epoch" in s for s in v.losing)
    assert "rejects" not in v.line
    p = load.problems.set_index("fqn")
    assert p.loc["progress._extra_state.epoch", "severity"] == "loses"
    rows = load.checks[load.checks.check == "bytes-replace-tensor"]
    assert list(rows.fqn) == ["progress._extra_state.epoch"] and set(rows.severity) == {"data-loss"}
    assert check_exit(load, tmp_path) == 1
    capsys.readouterr()


def test_a_tensor_where_the_target_holds_a_python_value_breaks_as_dcp_says(mlp_ckpt):
    """Real dcp.load raises on it; the verdict says it breaks, with DCP's own text."""
    exc = real_load(IntStep().state_dict(), mlp_ckpt)
    assert exc is not None
    load = dcpviz.simulate_load(
        mlp_ckpt, dcpviz.Scenario(model=IntStep, world_size=2, recipe="fsdp")
    )
    assert not load.verdict.loads and load.verdict.breaking
    p = load.problems.set_index("fqn")
    assert p.loc["progress.step", "severity"] == "breaks"
    assert p.loc["progress.step", "message"] in str(exc)


# -- item 5: data files missing or shorter than .metadata says ---------------------------------
class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(64))
        self.b = nn.Parameter(torch.randn(8))


@pytest.fixture
def pair_ckpt(tmp_path):
    """a, b and an extra key 'zzz' the target never reads, one data file each."""
    real_save({**Pair().state_dict(), "zzz": torch.randn(16)}, tmp_path / "ck", thread_count=3)
    files = {
        k.fqn: str(s.relative_path) for k, s in read_metadata(tmp_path / "ck").storage_data.items()
    }
    assert len(set(files.values())) == 3
    return tmp_path / "ck", files


PAIR = dcpviz.Scenario(model=Pair, world_size=2, recipe="fsdp")


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_data_file_that_is_read_fails_the_load(pair_ckpt, tmp_path, capsys, damage):
    """Before: 'It loads cleanly'. Real dcp.load fails; so does the verdict, naming the file."""
    path, files = pair_ckpt
    f = path / files["b"]
    if damage == "truncate":
        os.truncate(f, f.stat().st_size - 7)
    else:
        f.unlink()
    exc = real_load(Pair().state_dict(), path)
    assert exc is not None
    want = "FileNotFoundError" if damage == "delete" else "RuntimeError"
    assert want in str(exc)

    load = dcpviz.simulate_load(path, PAIR)
    v = load.verdict
    assert not v.loads and "missing or shorter than .metadata says" in v.line
    read = [e for e in load.trace.errors if e.phase == "read"]
    assert (
        read and {e.exc_type for e in read} == {want} and all(files["b"] in e.message for e in read)
    )
    assert "read-failed" in set(load.checks.check) and failing(load.checks)
    assert check_exit(load, tmp_path) == 1
    capsys.readouterr()


def test_a_damaged_data_file_no_rank_reads_does_not_fail_the_load(pair_ckpt):
    """Real dcp.load of a and b goes through with zzz's file gone; the verdict agrees."""
    path, files = pair_ckpt
    (path / files["zzz"]).unlink()
    assert real_load(Pair().state_dict(), path) is None
    load = dcpviz.simulate_load(path, PAIR)
    assert load.verdict.loads and not [e for e in load.trace.errors if e.phase == "read"]
    assert any("no rank of this load reads them" in n for n in load.trace.notes)


@pytest.fixture(scope="module")
def pair_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    real_save({**Pair().state_dict(), "zzz": torch.randn(16)}, root / "ck", thread_count=3)
    files = {
        k.fqn: str(s.relative_path) for k, s in read_metadata(root / "ck").storage_data.items()
    }
    return root / "ck", files


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(["a", "b", "zzz"]), cut=st.floats(0.0, 1.0))
def test_any_cut_of_a_data_file_fails_the_simulated_load_iff_it_fails_the_real_one(
    pair_template, tmp_path_factory, key, cut
):
    """A data file cut anywhere (0 bytes kept .. all kept): the simulated verdict fails exactly
    when real dcp.load does, and only on a file some rank reads."""
    import shutil

    template, files = pair_template
    path = tmp_path_factory.mktemp("cut") / "ck"
    shutil.copytree(template, path)
    f = path / files[key]
    os.truncate(f, int(f.stat().st_size * cut))
    real_failed = real_load(Pair().state_dict(), path) is not None
    load = dcpviz.simulate_load(path, PAIR)
    assert (not load.verdict.loads) == real_failed
    assert real_failed == (key != "zzz" and cut < 1.0)


def _nested_under_model(model, optimizer, rank):
    return {"model": model.state_dict()}


def test_a_cast_next_to_a_prefix_is_silent_not_breaking():
    """A checkpoint saved as {"model": ...} in fp32, loaded flat into a bf16 model: the prefix
    breaks the load; the cast does not (DCP's copy_ casts), even though its keys are the missing ones."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_nested_under_model)
    )
    load = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", dtype="bfloat16")
    )
    v = load.verdict
    assert len(v.breaking) == 1 and "model." in v.breaking[0]
    assert not any("cast" in b for b in v.breaking)
    assert any("cast" in s for s in v.silent)
