"""Tests written for analysis/load/hints_training.py's and hint_base.py's mutants (bench/mutate.py
target ``hints_training``).

Hand-built load traces (the key sets of a target and a checkpoint; the missing and unexpected keys
are their differences, worked out here), each hint's text written out in full from what the
keys say (which optimizer prefix, which groups, which DP ranks, which component)."""

from __future__ import annotations

from types import SimpleNamespace as NS

from dcpviz.analysis.load import hints_training as ht
from dcpviz.analysis.load.hint_base import Hint, _examples


def _trace(wanted, saved, bytes_keys=(), components=(), saved_components=None):
    return NS(
        wanted=[NS(fqn=k) for k in sorted(wanted)],
        saved=NS(tensors=[NS(fqn=k) for k in sorted(saved)], bytes_keys=tuple(bytes_keys)),
        scenario=NS(components=tuple(components)),
        saved_scenario=None if saved_components is None else NS(components=tuple(saved_components)),
    )


def _run(wanted, saved, **kw):
    """training_state_hints as hints.py calls it: on the keys one side has and the other lacks;
    returns (hints, what is left of missing, of unexpected)."""
    wanted, saved = set(wanted), set(saved)
    missing, unexpected = wanted - saved, saved - wanted
    hints = ht.training_state_hints(_trace(wanted, saved, **kw), missing, unexpected)
    return hints, missing, unexpected


def _groups_run(wanted, saved):
    wanted, saved = set(wanted), set(saved)
    missing, unexpected = wanted - saved, saved - wanted
    hints = ht.param_group_hints(_trace(wanted, saved), missing, unexpected)
    return hints, missing, unexpected


# -- hint_base ----------------------------------------------------------------------------------
def test_examples_show_the_first_sorted_keys_and_count_the_rest():
    assert _examples(["c", "a", "b"]) == "'a', 'b', 'c'"
    assert _examples(["d", "c", "a", "b"]) == "'a', 'b', 'c' and 1 more"
    assert _examples(("b", "a"), 1) == "'a' and 1 more"
    assert _examples(["a"], 1) == "'a'"
    assert _examples([]) == ""


def test_a_hint_prints_title_detail_and_fix_and_reads_its_rename():
    h = Hint("rename", "T", "D", "F", mapping=(("a", "x.a"), ("b", "y.b")))
    assert str(h) == "T\n  D\n  fix: F"
    assert h.rename == {"a": "x.a", "b": "y.b"}
    assert (h.keys, h.cause) == ((), "")
    assert Hint("size", "t", "d", "f").rename == {}


# -- an optimizer without state ----------------------------------------------------------------
GROUP0 = {"optim.param_groups.0.lr", "optim.param_groups.0.params"}
MOMENTS = {"optim.state.w.exp_avg", "optim.state.w.exp_avg_sq", "optim.state.v.exp_avg"}


def test_an_optimizer_without_state_skips_the_saved_moments_silently():
    hints, missing, unexpected = _run({"model.w", *GROUP0}, {"model.w", *GROUP0, *MOMENTS})
    (h,) = hints
    assert h.kind == "optimizer"
    assert h.title == (
        "The target's optimizer has no state yet: DCP skips the 3 saved optimizer values "
        "without a word"
    )
    assert h.detail == (
        "the target holds optim.param_groups but no optim.state (exp_avg, exp_avg_sq are saved, "
        "e.g. 'optim.state.v.exp_avg' and 2 more): optim.state_dict() before the first optimizer "
        "step has no moments, and dcp.load fills only the keys the target holds. The load succeeds "
        "and training resumes with fresh optimizer state (Adam restarts its moments and step counts)."
    )
    assert h.fix == ht._STATE_FIX
    assert "get_state_dict(model, optim)" in h.fix and "set_state_dict(model, optim" in h.fix
    assert h.keys == tuple(sorted(MOMENTS))
    assert (missing, unexpected) == (set(), set())


def test_an_optimizer_with_state_or_none_at_all_is_left_to_other_rules():
    # the target has state under the prefix: another rule (a renamed or index-keyed state)
    saved = {*GROUP0, *MOMENTS}
    hints, _, unexpected = _run({*GROUP0, "optim.state.0.exp_avg"}, saved)
    assert hints == [] and unexpected == MOMENTS
    # no optimizer at all in the target: the component / optimizer rule
    hints, _, unexpected = _run({"model.w"}, {"model.w", *saved})
    assert not [h for h in hints if "no state yet" in h.title]
    # a prefix per optimizer: only the one without state is named
    app = {k.replace("optim.", "app.optim.") for k in (*GROUP0, *MOMENTS)}
    hints, _, unexpected = _run(
        {*GROUP0, "optim.state.w.exp_avg", *[k for k in app if "state" not in k]},
        {*GROUP0, "optim.state.w.exp_avg", *app},
    )
    (h,) = hints
    assert "app.optim.param_groups but no app.optim.state" in h.detail
    assert h.keys == tuple(sorted(k for k in app if ".state." in k))


# -- param groups ------------------------------------------------------------------------------
ADAM = ("lr", "betas", "eps", "weight_decay", "amsgrad", "params")
SGD = ("lr", "momentum", "weight_decay", "params")


def _group(prefix, g, names):
    return {f"{prefix}param_groups.{g}.{n}" for n in names}


def test_another_count_of_param_groups():
    wanted = {"model.w", *_group("optim.", 0, ADAM)}
    saved = {"model.w", *_group("optim.", 0, ADAM), *_group("optim.", 1, ADAM)}
    hints, missing, unexpected = _groups_run(wanted, saved)
    (h,) = hints
    assert h.kind == "optimizer"
    assert h.title == "The optimizer has 2 param group(s) in the checkpoint and 1 in the target"
    assert h.detail == (
        "optim.param_groups.<i>.* keys differ ('optim.param_groups.1.amsgrad', "
        "'optim.param_groups.1.betas' and 4 more): DCP matches param groups by position, so a "
        "group the other side lacks is missing or never read, and set_state_dict maps "
        "parameters to the saved groups."
    )
    assert h.fix == (
        "# build the target's optimizer with the saving job's param groups, in the same order "
        "(e.g. the same no-weight-decay group for norms and biases)"
    )
    assert h.keys == tuple(sorted(_group("optim.", 1, ADAM)))
    assert (missing, unexpected) == (set(), set())


def test_another_optimizer_class_names_the_hyper_parameters_and_state_of_each_side():
    wanted = {*_group("optim.", 0, SGD), "optim.state.w.momentum_buffer", "model.w"}
    saved = {
        *_group("optim.", 0, ADAM),
        "optim.state.w.exp_avg",
        "optim.state.w.exp_avg_sq",
        "model.w",
        "model.extra",
    }
    hints, missing, unexpected = _groups_run(wanted, saved)
    (h,) = hints
    assert h.kind == "optimizer"
    assert h.title == (
        "The target's optimizer is another kind than the saved one (other hyper-parameters)"
    )
    assert h.detail == (
        "param group(s) 0: the checkpoint has amsgrad, betas, eps that the target lacks, the "
        "target momentum that the checkpoint lacks; per parameter the checkpoint saves exp_avg, "
        "exp_avg_sq and the target holds momentum_buffer."
    )
    assert h.fix == (
        "# build the target with the saving job's optimizer class (in dcpviz: the same "
        "Scenario.optimizer), or load the model alone and start the new optimizer fresh"
    )
    explained = {
        "optim.param_groups.0.amsgrad",
        "optim.param_groups.0.betas",
        "optim.param_groups.0.eps",
        "optim.param_groups.0.momentum",
        "optim.state.w.exp_avg",
        "optim.state.w.exp_avg_sq",
        "optim.state.w.momentum_buffer",
    }
    assert h.keys == tuple(sorted(explained))
    assert (missing, unexpected) == (set(), {"model.extra"})


def test_groups_that_only_add_names_on_one_side_say_nothing_for_the_other():
    # the target's group has an extra name, nothing else differs: no state names either
    wanted = {*_group("optim.", 0, ("lr", "params", "foreach"))}
    saved = {*_group("optim.", 0, ("lr", "params"))}
    (h,) = _groups_run(wanted, saved)[0]
    assert h.detail == (
        "param group(s) 0: the checkpoint has nothing that the target lacks, the target foreach "
        "that the checkpoint lacks."
    )
    (h,) = _groups_run(saved, wanted)[0]
    assert h.detail == (
        "param group(s) 0: the checkpoint has foreach that the target lacks, the target nothing "
        "that the checkpoint lacks."
    )


def test_equal_groups_or_one_sided_optimizers_give_no_group_hint():
    same = _group("optim.", 0, ADAM)
    assert _groups_run({*same, "a"}, {*same, "b"})[0] == []
    assert _groups_run({"model.w"}, {"model.w", *same})[0] == []
    # groups under another prefix on each side: nothing to compare
    assert _groups_run(_group("a.", 0, ADAM), _group("b.", 0, SGD))[0] == []


def test_only_the_moments_of_the_differing_prefix_are_explained():
    wanted = {*_group("optim.", 0, SGD), *_group("app.", 0, ADAM), "app.state.w.exp_avg"}
    saved = {*_group("optim.", 0, ADAM), *_group("app.", 0, ADAM), "app.state.v.exp_avg"}
    hints, missing, unexpected = _groups_run(wanted, saved)
    (h,) = hints
    assert "per parameter" not in h.detail
    assert missing == {"app.state.w.exp_avg"} and unexpected == {"app.state.v.exp_avg"}


def test_state_names_differ_on_one_side_only():
    assert ht._state_names_differ(set(), set()) == ""
    assert ht._state_names_differ({"o.state.w.exp_avg"}, set()) == (
        "; per parameter the checkpoint saves exp_avg and the target holds nothing"
    )
    assert ht._state_names_differ(set(), {"o.state.w.sum", "o.state.v.sum"}) == (
        "; per parameter the checkpoint saves nothing and the target holds sum"
    )


# -- data-loader positions ---------------------------------------------------------------------
def _dp(ranks, prefix="dataloader."):
    return {f"{prefix}dp_rank_{r}" for r in ranks}


def test_positions_of_dp_ranks_the_target_lacks_are_named_as_lost():
    hints, missing, unexpected = _run({"model.w", *_dp([0, 1])}, {"model.w", *_dp(range(4))})
    (h,) = hints
    assert h.kind == "dataloader"
    assert h.title == "Data-loader positions of 2 data-parallel rank(s) are read by no target rank"
    assert h.detail == (
        "the checkpoint holds dp_rank_{i} keys for DP rank(s) 2, 3; the target has 2 DP rank(s) "
        "('dp_rank_0', 'dp_rank_1'). DCP ignores the others silently: those ranks' positions in "
        "the data are lost, so samples repeat or are skipped after resuming."
    )
    assert h.fix == (
        "# resume with the saving job's data-parallel degree (torchtitan's data loader refuses "
        "another one: 'dataloader resharding is not supported yet'), or leave the data loader out "
        "of the state passed to dcp.load and accept a data order that restarts"
    )
    assert h.keys == ("dataloader.dp_rank_2", "dataloader.dp_rank_3")
    assert (missing, unexpected) == (set(), set())


def test_dp_ranks_the_checkpoint_lacks_are_named_as_raising():
    hints, missing, unexpected = _run(_dp(range(5)), _dp([0, 1]))
    (h,) = hints
    assert h.kind == "dataloader"
    assert h.fix == (
        "# resume with the saving job's data-parallel degree, or leave the data loader out of the "
        "state passed to dcp.load (the data order restarts)"
    )
    assert h.title == "3 target data-parallel rank(s) have no saved data-loader position"
    assert h.detail == (
        "'dataloader.dp_rank_2', 'dataloader.dp_rank_3' and 1 more are not in the checkpoint: "
        "the target has more DP ranks than the saving job, and dcp.load raises on the first "
        "of them."
    )
    assert h.keys == tuple(sorted(_dp([2, 3, 4])))
    assert (missing, unexpected) == (set(), set())


def test_dp_ranks_differ_both_ways():
    hints, missing, unexpected = _run(_dp([0, 1, 5]), _dp([0, 1, 2, 3, 4, 6]))
    assert [h.title for h in hints] == [
        "1 target data-parallel rank(s) have no saved data-loader position",
        "Data-loader positions of 4 data-parallel rank(s) are read by no target rank",
    ]
    assert "DP rank(s) 2, 3, 4, 6; the target has 3 DP rank(s)" in hints[1].detail
    assert (missing, unexpected) == (set(), set())


def test_a_data_loader_on_one_side_only_is_the_component_rule():
    hints, missing, unexpected = _run({"model.w"}, {"model.w", *_dp([0, 1])})
    assert [h.kind for h in hints] == ["component"]
    hints, missing, unexpected = _run({"model.w", *_dp([0, 1])}, {"model.w"})
    assert [h.kind for h in hints] == ["component"]


# -- components on one side --------------------------------------------------------------------
def test_a_scheduler_only_the_checkpoint_has():
    saved = {"model.w", "lr_scheduler.last_epoch", "lr_scheduler._step_count"}
    hints, missing, unexpected = _run({"model.w"}, saved)
    (h,) = hints
    assert h.kind == "component"
    assert h.title == "The checkpoint has lr_scheduler state that the target does not load"
    assert h.detail == (
        "2 key(s) ('lr_scheduler._step_count', 'lr_scheduler.last_epoch'): the target's state "
        "has no 'lr_scheduler', and DCP ignores what no target rank asks for. Resuming starts a "
        "fresh lr_scheduler (the learning-rate schedule restarts, warmup included)."
    )
    assert h.fix == (
        "# add the lr_scheduler to the state the target passes to dcp.load (a Stateful with "
        "state_dict / load_state_dict), as the saving job did"
    )
    assert h.keys == ("lr_scheduler._step_count", "lr_scheduler.last_epoch")
    assert unexpected == set()


def test_a_train_state_only_the_target_has():
    hints, missing, unexpected = _run({"model.w", "train_state.step"}, {"model.w"})
    (h,) = hints
    assert h.kind == "component"
    assert h.keys == ("train_state.step",)
    assert h.title == "The target loads train_state state that the checkpoint does not have"
    assert h.detail == (
        "1 key(s) ('train_state.step'): the saving job did not save a 'train_state'; dcp.load "
        "raises on the first of them."
    )
    assert h.fix == (
        "# leave 'train_state' out of the state passed to dcp.load when resuming from this "
        "checkpoint, or planner=DefaultLoadPlanner(allow_partial_load=True) to keep its initial "
        "values"
    )
    assert missing == set()
    # a non-scheduler part the checkpoint alone has: no schedule words
    (h,) = _run({"model.w"}, {"model.w", "rng.state"})[0]
    assert h.detail.endswith("Resuming starts a fresh rng.")


def test_parts_both_sides_have_model_keys_and_optimizers_are_other_rules():
    # both sides have a train_state (another key in it): not a component on one side
    hints, missing, unexpected = _run(
        {"model.w", "train_state.step", "model.new"},
        {"model.w", "train_state.epoch", "model.old"},
    )
    assert hints == []
    assert missing == {"train_state.step", "model.new"}
    assert unexpected == {"train_state.epoch", "model.old"}
    # a whole optimizer on one side: hints.py's optimizer rule says it
    opt = {"optim.state.w.exp_avg", *GROUP0}
    assert _run({"model.w"}, {"model.w", *opt})[0] == []
    assert _run({"model.w", *opt}, {"model.w"})[0] == []


def test_components_come_from_each_sides_recorded_prefixes():
    # the target records `extra` as its `ema` part; the checkpoint records nothing, so its
    # `extra.w` is the model's (the first segment is no known component)
    hints, _, _ = _run(
        {"model.w", "extra.w"}, {"model.w"}, components=[("extra", "ema")], saved_components=[]
    )
    (h,) = hints
    assert h.title == "The target loads ema state that the checkpoint does not have"
    # without a saved scenario the checkpoint's keys are read with the target's prefixes
    hints, _, _ = _run({"model.w"}, {"model.w", "extra.w"}, components=[("extra", "ema")])
    (h,) = hints
    assert h.title == "The checkpoint has ema state that the target does not load"
    hints, _, _ = _run(
        {"model.w"}, {"model.w", "extra.w"}, components=[("extra", "ema")], saved_components=[]
    )
    assert hints == []  # the checkpoint's extra.w is model state there


def test_bytes_entries_count_as_saved_keys():
    tr = _trace({"a"}, {"t"}, bytes_keys=("b",))
    assert ht.saved_keys(tr) == {"t", "b"}


def test_every_differing_group_is_named():
    wanted = {*_group("optim.", 0, SGD), *_group("optim.", 1, SGD), *_group("optim.", 2, ADAM)}
    saved = {*_group("optim.", 0, ADAM), *_group("optim.", 1, ADAM), *_group("optim.", 2, ADAM)}
    (h,) = _groups_run(wanted, saved)[0]
    assert h.detail.startswith(
        "param group(s) 0, 1: the checkpoint has amsgrad, betas, eps that the target lacks, the "
        "target momentum that the checkpoint lacks."
    )


def test_every_name_only_the_target_has_is_named():
    wanted = _group("optim.", 0, ("lr", "params", "momentum", "nesterov"))
    saved = _group("optim.", 0, ("lr", "params"))
    (h,) = _groups_run(wanted, saved)[0]
    assert h.detail == (
        "param group(s) 0: the checkpoint has nothing that the target lacks, the target momentum, "
        "nesterov that the checkpoint lacks."
    )
