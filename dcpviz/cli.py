"""The ``dcpviz`` command: simulate a save plan, show a saved trace, write reports.

Bad input prints one line (``dcpviz: error: ...``) and exits 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from dcpviz.analysis.checkpoint.hf_checks import folder_checks
from dcpviz.analysis.checks import counts, failing, refused_checkpoint
from dcpviz.analysis.load.fix import fix_file
from dcpviz.core.errors import CheckpointError, DcpvizError
from dcpviz.core.hf.folder import is_hf_folder, scan_folder
from dcpviz.results import load_trace
from dcpviz.terminal import checks_renderable, print_result


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _mesh(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--mesh {text!r}: write the mesh as 2x4 (ints joined by 'x')"
        ) from None
    if not dims:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: write the mesh as 2x4")
    return dims


_SPEC = "a preset or your own zero-argument factory as pkg.module:function"


def _add_scenario_flags(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The target job's flags; ``defaults`` holds each flag's default, or None for 'as saved'."""

    def said(name: str, what: str) -> str:
        value = defaults[name]
        return f"(default: {value})" if value is not None else f"(default: {what})"

    p.add_argument(
        "--model",
        default=defaults["model"],
        help=f"mlp, llama-tiny, llama3-8b, llama3-70b, or {_SPEC} returning an nn.Module, "
        f"e.g. --model mypkg.models:build {said('model', 'the saved model')}",
    )
    p.add_argument(
        "--world-size",
        "-W",
        type=int,
        default=defaults["world_size"],
        help=f"number of ranks {said('world_size', 'the saved world size')}",
    )
    p.add_argument(
        "--mesh",
        type=_mesh,
        default=None,
        help="mesh shape, e.g. 2x4 (default: 1-D, or the saved mesh when the world size is the saved one)",
    )
    p.add_argument(
        "--mesh-dim-names",
        default=None,
        help="comma-separated, e.g. replicate,shard (default: the recipe's)",
    )
    p.add_argument(
        "--recipe",
        default=defaults["recipe"],
        help=f"replicate, fsdp, hsdp, tp, tp+fsdp, or {_SPEC} taking (model, device_mesh), "
        f"e.g. --recipe mypkg.parallel:shard {said('recipe', 'the saved recipe')}",
    )
    p.add_argument(
        "--dtype",
        default=defaults["dtype"],
        help="cast floating-point parameters, e.g. bfloat16 "
        + said("dtype", "the saved one; else the model's own dtypes"),
    )
    p.add_argument(
        "--optimizer",
        default=defaults["optimizer"],
        help=f"adamw, adam, sgd, none, or {_SPEC} taking the parameters and returning an Optimizer: "
        f"its state is in the state dict too {said('optimizer', 'the saved one')}",
    )
    p.add_argument(
        "--state",
        default=defaults["state"],
        help=f"dcp-tutorial, torchtitan, none, or {_SPEC} taking (model, optimizer, rank): the dict "
        f"passed to dcp.save / dcp.load {said('state', 'the saved one')}",
    )


_EPILOG_SIMULATE = """examples:
  dcpviz simulate --model llama-tiny -W 4 --mesh 2x2 --recipe tp+fsdp --trace plan.json
  dcpviz simulate --model mypkg.models:build -W 8 --mesh 2x4 --recipe hsdp --report plan.html"""
_EPILOG_LOAD = """examples:
  dcpviz load path/to/ckpt --model mypkg.models:build -W 6 --recipe fsdp   # your checkpoint, your model
  dcpviz load plan.json -W 6                      # the saved model, dtype and recipe, on 6 ranks
  dcpviz load path/to/ckpt --model mypkg.models:build --report load.html"""
_EPILOG_SHOW = """examples:
  dcpviz show plan.json                 # a save or load trace: summary in the terminal
  dcpviz show load.json --report load.html"""


def build_parser() -> argparse.ArgumentParser:
    """The ``dcpviz`` argument parser: simulate, load, show, demo."""
    parser = _Parser(prog="dcpviz", description="See what PyTorch Distributed Checkpoint plans.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fmt = argparse.RawDescriptionHelpFormatter
    sim = sub.add_parser(
        "simulate",
        help="simulate DCP's save planner on every rank of a scenario",
        epilog=_EPILOG_SIMULATE,
        formatter_class=fmt,
    )
    _add_scenario_flags(
        sim,
        {
            "model": "mlp",
            "world_size": 8,
            "recipe": "hsdp",
            "dtype": "bfloat16",
            "optimizer": "none",
            "state": "none",
        },
    )
    sim.add_argument(
        "--dedup-to-lowest-rank",
        action="store_true",
        help="DefaultSavePlanner(dedup_save_to_lowest_rank=True)",
    )
    sim.add_argument(
        "--no-flatten", action="store_true", help="DefaultSavePlanner(flatten_state_dict=False)"
    )
    sim.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    sim.add_argument("--trace", type=Path, help="write the trace (JSON) here")
    sim.add_argument("--quiet", "-q", action="store_true", help="no terminal summary")

    load = sub.add_parser(
        "load",
        help="simulate DCP's load planner: a checkpoint (dir or save trace) into your job's layout",
        epilog=_EPILOG_LOAD,
        formatter_class=fmt,
    )
    load.add_argument(
        "saved",
        type=Path,
        help="a checkpoint directory (only .metadata is read, safely) or a save trace (.json)",
    )
    _add_scenario_flags(
        load,
        {
            "model": None,
            "world_size": None,
            "recipe": None,
            "dtype": None,
            "optimizer": None,
            "state": None,
        },
    )
    load.add_argument(
        "--allow-partial-load",
        action="store_true",
        help="DefaultLoadPlanner(allow_partial_load=True)",
    )
    load.add_argument(
        "--expected-unused",
        action="append",
        default=[],
        metavar="KEY",
        help="a checkpoint key (or glob, e.g. 'optim.*') left unread on purpose; repeatable",
    )
    load.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    load.add_argument("--trace", type=Path, help="write the load trace (JSON) here")
    load.add_argument(
        "--emit-fix",
        type=Path,
        metavar="FILE",
        help="write a Python file that applies every certain fix (python FILE checks it with a real load)",
    )
    load.add_argument(
        "--choose",
        action="append",
        default=[],
        metavar="TARGET=CHECKPOINT",
        help="your answer to an ambiguity the hints show, for --emit-fix (e.g. wq=q_proj, =ema.); repeatable",
    )
    load.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print just the verdict (the exit status says the rest)",
    )

    show = sub.add_parser(
        "show",
        help="print a saved trace (and optionally write its report)",
        epilog=_EPILOG_SHOW,
        formatter_class=fmt,
    )
    show.add_argument(
        "trace",
        type=Path,
        help="a trace file (.json) from --trace, result.to_json or a recording planner",
    )
    show.add_argument("--report", type=Path, help="write a self-contained HTML report here")

    check = sub.add_parser(
        "check",
        help="what DCP does silently that loses data, fails or costs; exit 1 on data-loss or error",
    )
    check.add_argument(
        "path",
        type=Path,
        help="a save or load trace (.json), a checkpoint directory or a safetensors folder",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON (for CI)")
    check.add_argument(
        "--report",
        type=Path,
        help="write a self-contained HTML report here (a checkpoint: "
        "its checks, files, chunks and file layout)",
    )

    _add_diff_parser(sub, fmt)

    demo = sub.add_parser(
        "demo", help="the default scenario: terminal summary, report.html, next steps"
    )
    demo.add_argument("--report", type=Path, default=Path("report.html"))
    return parser


def _as_saved(
    flag_value: Any, saved_name: str, flag: str, needs: list[tuple[str, str]], what: str
) -> Any:
    """A flag the user left out takes the saved job's value only when it is a preset name:
    dcpviz never imports or calls a name read from a trace or a checkpoint (a trace is data).
    A saved callable or a captured job adds (the flag to pass, what was saved) to ``needs``."""
    if flag_value is not None or not saved_name:
        return flag_value
    # deferred with the rest of engine/: only the commands that simulate need it.
    from dcpviz.engine.job.userspec import CALLABLE_PREFIX

    if saved_name.startswith(CALLABLE_PREFIX):
        dotted = saved_name.removeprefix(CALLABLE_PREFIX)
        module, _, attr = dotted.rpartition(".")
        spec = f"{module}:{attr}" if module and "<" not in dotted else "pkg.module:function"
        needs.append((f"{flag} {spec}", f"{what} was {dotted}"))
        return None
    if saved_name == "captured":
        needs.append(
            (
                f"{flag} pkg.module:function",
                f"{what} is not known (the trace was captured from your own job by a recording planner)",
            )
        )
        return None
    return saved_name


def _scenario_from(args: argparse.Namespace, saved: Any = None) -> Any:
    """The job from the flags; flags left out take the saved job's values (``saved``: a
    ScenarioInfo) where those are presets; the saved job's own factories are named, never run."""
    # torch, deferred: only the commands that simulate need a Scenario.
    from dcpviz.engine.job.scenario import AS_BUILT, Scenario
    from dcpviz.engine.job.userspec import resolve_spec

    model, recipe, dtype, world = args.model, args.recipe, args.dtype, args.world_size
    optimizer, state = args.optimizer, args.state
    mesh, names = (
        args.mesh,
        tuple(n.strip() for n in args.mesh_dim_names.split(",")) if args.mesh_dim_names else None,
    )
    if world is not None and world < 1:
        raise DcpvizError(
            f"--world-size {world}: the number of ranks must be a positive int (e.g. -W 8)."
        )
    if saved is not None:
        needs: list[tuple[str, str]] = []
        model = _as_saved(model, saved.model, "--model", needs, "the saved model factory")
        recipe = _as_saved(recipe, saved.recipe, "--recipe", needs, "the saved recipe")
        dtype = dtype or (None if saved.dtype == AS_BUILT else saved.dtype)
        world = world or saved.world_size
        optimizer = _as_saved(
            optimizer, saved.optimizer, "--optimizer", needs, "the saved optimizer"
        )
        state = _as_saved(state, saved.state, "--state", needs, "the saved state")
        if needs:
            said = "; ".join(what for _, what in needs)
            flags = " ".join(flag for flag, _ in needs)
            raise DcpvizError(
                f"{said[:1].upper()}{said[1:]}. dcpviz never imports or calls a name found in a "
                f"trace or checkpoint: pass it yourself, e.g. {flags}"
            )
        if mesh is None and world == saved.world_size and recipe == saved.recipe:
            mesh, names = tuple(saved.mesh), names or tuple(saved.mesh_dim_names)
    if model is None:
        raise DcpvizError(
            "the checkpoint does not say which model saved it: pass --model, e.g. "
            "--model mypkg.models:build (a zero-argument function returning your nn.Module)."
        )
    return Scenario(
        model=resolve_spec(model, "--model"),
        world_size=world if world is not None else 8,
        mesh=mesh,
        mesh_dim_names=names,
        recipe=resolve_spec(recipe or "fsdp", "--recipe"),
        dtype=dtype,
        optimizer=_none(resolve_spec(optimizer, "--optimizer")),
        state=_none(resolve_spec(state, "--state")),
    )


def _none(value: Any) -> Any:
    """'none' on the command line: no optimizer / the plain state dict."""
    return None if value in (None, "", "none") else value


def _write_outputs(result: Any, args: argparse.Namespace, console: Console) -> None:
    if getattr(args, "trace", None) and args.command in ("simulate", "load"):
        path = result.to_json(args.trace)
        console.print(f"trace written to [bold]{escape(str(path))}[/]")
    if getattr(args, "report", None):
        # plotly, deferred: only a report needs it, and importing it costs about a second.
        from dcpviz.html_report import report

        path = report(result, args.report)
        console.print(
            f"report written to [bold]{escape(str(path))}[/] (open it in any browser; works offline)"
        )


def _simulate(args: argparse.Namespace, console: Console) -> int:
    # torch, deferred: `dcpviz show` must work where torch is not installed.
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from dcpviz.api import simulate_save
    from dcpviz.engine.job.scenario import Scenario

    if args.command == "demo":
        scenario = Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
        planner = None
    else:
        scenario = _scenario_from(args)
        planner = DefaultSavePlanner(
            dedup_save_to_lowest_rank=args.dedup_to_lowest_rank,
            flatten_state_dict=not args.no_flatten,
        )
    result = simulate_save(scenario, planner=planner)
    if not getattr(args, "quiet", False):
        print_result(result, console)
    _write_outputs(result, args, console)
    if args.command == "demo":
        _print_next_steps(console, args.report)
        return 0
    # A gate: 1 when the save plan fails or a check finds data loss or an error, 0 otherwise.
    return _gate(result)


def _load(args: argparse.Namespace, console: Console) -> int:
    # torch, deferred: `dcpviz show` must work where torch is not installed.
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from dcpviz.api import simulate_load
    from dcpviz.engine.checkpoint.saved import resolve_saved

    saved = args.saved
    if not saved.exists():
        raise DcpvizError(
            f"{str(saved)!r} does not exist: pass a checkpoint directory or a save trace file."
        )
    result = simulate_load(
        saved,
        _scenario_from(args, resolve_saved(saved).scenario),
        planner=DefaultLoadPlanner(allow_partial_load=args.allow_partial_load),
        expected_unused=args.expected_unused,
    )
    verdict = result.verdict
    if args.quiet:
        print(verdict.line)  # just the verdict, unwrapped (a script greps it)
    else:
        print_result(result, console)
    out = Console(quiet=True) if args.quiet else console
    _write_outputs(result, args, out)
    if args.emit_fix:
        _emit_fix(result, args, out)
    return _gate(result)


def _emit_fix(result: Any, args: argparse.Namespace, console: Console) -> None:
    """--emit-fix FILE: the fix as a runnable file (``analysis.load.fix.fix_file``)."""
    bad = [c for c in args.choose if "=" not in c]
    if bad:
        raise DcpvizError(
            f"--choose {bad[0]!r}: write TARGET=CHECKPOINT, e.g. --choose wq=q_proj or --choose =ema."
        )
    choices = dict(c.split("=", 1) for c in args.choose)
    text = fix_file(
        result.fix_code(rename=choices),
        str(args.saved),
        result.trace,
        "dcpviz " + " ".join(sys.argv[1:]),
    )
    args.emit_fix.write_text(text)
    console.print(
        f"fix written to [bold]{escape(str(args.emit_fix))}[/] (python {escape(str(args.emit_fix))} "
        "checks it with a real load)"
    )


def _gate(result: Any) -> int:
    """The exit status of a save or load result: 1 when the plan failed, a check fails, or
    (a load) dcp.load would raise or lose checkpoint data; 0 when clean."""
    if failing(result.checks):
        return 1
    if result.trace.kind == "load":
        return 0 if result.verdict.clean else 1
    return 1 if result.trace.errors else 0


def _show(args: argparse.Namespace, console: Console) -> int:
    result = load_trace(args.trace)
    print_result(result, console)
    _write_outputs(result, args, console)
    return _gate(result)


def _checked(path: Path) -> tuple[Any, Any]:
    """The checks of a trace file, a checkpoint directory or a safetensors folder, and what a
    report of it renders (None where the checkpoint cannot be read: a directory that cannot be
    read safely — a BYTE_IO entry that would build an unsafe class, a broken record — is one
    error row)."""
    if not path.exists():
        raise DcpvizError(
            f"{str(path)!r} does not exist: pass a save or load trace (.json) or a checkpoint directory."
        )
    if not path.is_dir() and not is_hf_folder(path):
        result = load_trace(path)
        return result.checks, result
    # torch, deferred: only a checkpoint directory needs it (traces are checked without torch).
    from dcpviz.api import inspect_checkpoint

    try:
        info = inspect_checkpoint(path)
    except DcpvizError as exc:
        if is_hf_folder(path):  # headers only: an unreadable file is a finding, not a refusal
            return folder_checks(scan_folder(path)), None
        if isinstance(exc, CheckpointError):
            return refused_checkpoint(str(path), str(exc)), None
        raise
    return info.checks, info


def _check(args: argparse.Namespace, console: Console) -> int:
    checks, subject = _checked(args.path)
    if args.json:
        rows = [
            {**row, "ranks": [int(r) for r in row["ranks"]]} for row in checks.to_dict("records")
        ]
        doc = {
            "path": str(args.path),
            "failing": failing(checks),
            "counts": counts(checks),
            "checks": rows,
        }
        print(json.dumps(doc, indent=1))
    else:
        console.print(checks_renderable(checks, str(args.path), console.width))
    if args.report:
        out = Console(quiet=True) if args.json else console
        if subject is None:
            out.print("no report: the checkpoint cannot be read (the checks above say why)")
        else:
            from dcpviz.html_report import report  # plotly, deferred: only a report needs it

            out.print(f"report written to [bold]{escape(str(report(subject, args.report)))}[/]")
    return 1 if failing(checks) else 0


_EPILOG_DIFF = """examples:
  dcpviz diff ckpt_tuesday ckpt_wednesday            # keys, renames, shapes, dtypes, layout
  dcpviz diff ckpt_8ranks ckpt_6ranks --values       # contents too, chunk by chunk (exact)
  dcpviz diff ckpt hf_export/ --values --atol 1e-3   # DCP against a safetensors folder
  dcpviz diff plan.json ckpt                         # did the job save what the plan said?
exit status: 0 same content (a layout-only difference is the same content), 1 differs, 2 error"""


def _add_diff_parser(sub: Any, fmt: Any) -> None:
    d = sub.add_parser(
        "diff",
        help="what changed between two checkpoints (DCP, safetensors or save traces); "
        "exit 1 when the content differs",
        epilog=_EPILOG_DIFF,
        formatter_class=fmt,
    )
    d.add_argument(
        "a",
        type=Path,
        help="a DCP checkpoint directory, a safetensors folder or file, or a save trace",
    )
    d.add_argument("b", type=Path, help="the same kinds, in any pairing")
    d.add_argument(
        "--values",
        action="store_true",
        help="compare contents chunk by chunk (streamed, bounded memory)",
    )
    d.add_argument(
        "--atol", type=float, default=0.0, help="absolute tolerance for --values (default: exact)"
    )
    d.add_argument(
        "--rtol", type=float, default=0.0, help="relative tolerance for --values (default: exact)"
    )
    d.add_argument("--json", action="store_true", help="print the whole result as JSON")
    d.add_argument("--report", type=Path, help="write a self-contained HTML report here")


def _diff(args: argparse.Namespace, console: Console) -> int:
    # torch, deferred: reading chunk values needs it.
    from dcpviz.api import diff

    result = diff(args.a, args.b, values=args.values, atol=args.atol, rtol=args.rtol)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print_result(result, console)
    if args.report:
        # plotly, deferred: only a report needs it, and importing it costs about a second.
        from dcpviz.html_report import report

        path = report(result, args.report)
        if not args.json:
            console.print(f"report written to [bold]{escape(str(path))}[/]")
    return result.exit_code


_COMMANDS = {
    "simulate": _simulate,
    "demo": _simulate,
    "load": _load,
    "show": _show,
    "check": _check,
    "diff": _diff,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dcpviz`` command: parse ``argv``, run the command, return the exit status (2 for a
    user mistake, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    command = _COMMANDS.get(args.command)
    if command is None:
        return 1
    try:
        return command(args, console)
    except DcpvizError as exc:
        print(f"dcpviz: error: {exc}", file=sys.stderr)
        return 2


def _print_next_steps(console: Console, report_path: Path) -> None:
    console.print(
        "\n[bold]Next:[/]\n"
        f"  open {escape(str(report_path))} in a browser (self-contained, offline)\n"
        "  .venv/bin/jupyter lab notebooks/     # then open 01_tour.ipynb and run all cells\n"
        "  .venv/bin/dcpviz simulate --recipe hsdp --mesh 2x4 --trace plan.json -q   # keep this plan as a trace\n"
        "  .venv/bin/dcpviz load plan.json -W 6 --recipe fsdp --report load.html     # would it load on 6 ranks?\n"
        "  .venv/bin/dcpviz simulate --help     # other models, meshes, recipes, planner options"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
