"""The `lshsim` command's registry, its lazy imports, the executor's commands and byte sizes."""
from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

import lshsim.cli
from lshsim.cli import SUBCOMMANDS, build_parser, main

EXECUTOR_COMMANDS = ("run", "calibrate", "check", "launch")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {a.dest: (tuple(a.option_strings), a.default, a.type, a.required, a.nargs) for a in parser._actions
            if a.dest != "help"}


def test_every_registered_command_is_in_help_in_order(capsys):
    assert list(_subparsers(build_parser())) == list(SUBCOMMANDS)
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"    {name}") for name in SUBCOMMANDS]
    assert positions == sorted(positions)


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys, lshsim.cli; lshsim.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'simpy', 'networkx', 'rich', 'matplotlib') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_new_command_is_one_module_and_one_entry(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello_command.py").write_text(textwrap.dedent('''
        from lshsim.checks import arg_positive_int
        from lshsim.cli import _render


        def add_parser(subparsers):
            p = subparsers.add_parser("hello", help="greet")
            p.add_argument("--times", type=arg_positive_int, default=1)
            return p


        def run(args):
            if args.times > 3:
                raise ValueError(f"times={args.times} is too many")
            _render.print_json({"hello": args.times})
            return 0
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "hello", "hello_command")
    assert main(["hello", "--times", "2"]) == 0
    assert capsys.readouterr().out.strip().replace(" ", "").replace("\n", "") == '{"hello":2}'
    with pytest.raises(SystemExit) as exit_info:
        main(["hello", "--times", "5"])
    assert exit_info.value.code == 2 and "lshsim hello: error: times=5 is too many" in capsys.readouterr().err


def test_a_module_registered_under_another_name_is_refused(monkeypatch):
    monkeypatch.setattr(lshsim.cli, "SUBCOMMANDS", {"itinerary": "lshsim.cli.route"})
    with pytest.raises(RuntimeError, match="registered as 'itinerary'"):
        build_parser()


def test_executor_commands_have_the_same_arguments_under_both_entry_points():
    from lshsim.executor.__main__ import build_parser as executor_parser

    ours, theirs = _subparsers(build_parser()), _subparsers(executor_parser())
    assert list(theirs) == list(EXECUTOR_COMMANDS)
    for name in EXECUTOR_COMMANDS:
        assert _options(ours[name]) == _options(theirs[name]), name


@pytest.mark.parametrize("argv, expected", [
    (["calibrate", "--max-bytes", "1536MiB"], {"max_bytes": 1536 * 2 ** 20}),
    (["calibrate", "--max-bytes", "1GiB", "--min-bytes", "4KiB"], {"max_bytes": 2 ** 30, "min_bytes": 4096}),
    (["calibrate", "--min-bytes", "64MB", "--fit-min-bytes", "0"], {"min_bytes": 64_000_000, "fit_min_bytes": 0}),
    (["calibrate", "--fit-min-bytes", "1MiB"], {"fit_min_bytes": 2 ** 20}),
    (["a2a-cost", "--bytes-per-rank", "256MB"], {"bytes_per_rank": 256e6}),
    (["a2a-cost", "--bytes-per-rank", "1.5GiB"], {"bytes_per_rank": 1.5 * 2 ** 30}),
])
def test_byte_sizes_si_and_iec(argv, expected):
    args = build_parser().parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("argv", [
    ["calibrate", "--max-bytes", "4k"],
    ["a2a-cost", "--bytes-per-rank", "64M"],
])
def test_a_bare_k_m_g_is_refused_saying_what_to_write(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ambiguous size" in err and "iB (powers of 1024)" in err


def test_byte_options_say_what_they_accept():
    from lshsim.units import BYTES_HELP

    parsers = _subparsers(build_parser())
    for name in ("a2a-cost", "simulate", "calibrate"):
        assert " ".join(BYTES_HELP.split()) in " ".join(parsers[name].format_help().split()), name


@pytest.mark.parametrize("argv, expected", [
    (["collision", "--dim", "64", "--hashs", "6"],
     "lshsim collision: error: unrecognized arguments: --hashs 6 (did you mean --hashes?) (see lshsim collision --help)"),
    (["plan", "--lsh_rate", "0.1"], "lshsim plan: error: unrecognized arguments: --lsh_rate 0.1 (did you mean --lsh-rate?)"),
    (["plan", "stray"], "lshsim plan: error: unrecognized arguments: stray (see lshsim plan --help)"),
    (["simulate", "--topology", "a100-nvswitch", "--traffic", "uniform:1MB", "--plot", "x.png"],  # no near option
     "lshsim simulate: error: unrecognized arguments: --plot x.png (see lshsim simulate --help)"),
])
def test_a_misspelt_option_is_refused_by_its_sub_command_with_the_nearest_option(capsys, argv, expected):
    """argparse reports a sub-command's unknown option from the top parser (`lshsim: error: ... (see lshsim
    --help)`, the wrong help); it is refused in the sub-command's name, naming the option it is close to."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_version(capsys):
    """`lshsim --version` said "the following arguments are required: COMMAND" (exit 2)."""
    from lshsim import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"lshsim {__version__}"


def test_launch_needs_a_sub_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "--nproc", "2", "--"])
    assert exit_info.value.code == 2
    assert "launch needs a sub-command after '--'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "--nproc", "2", "--", "plan"])            # was "needs a sub-command", one was given
    assert exit_info.value.code == 2
    assert "launch: unknown sub-command 'plan' after '--'; known: run, calibrate, check" in capsys.readouterr().err


def test_python_dash_m_entry_points_run():
    for module in ("lshsim.cli", "lshsim.executor"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "calibrate" in result.stdout, (module, result.stderr)


def test_package_docstring_names_the_extension_point():
    assert "SUBCOMMANDS" in lshsim.cli.__doc__ and "add_parser" in lshsim.cli.__doc__
