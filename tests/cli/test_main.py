import subprocess
import sys

import pytest

from tuneforge.cli.main import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_help_lists_the_verbs(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for verb in ("generate", "merge"):
        assert verb in out


def test_user_error_prints_error_and_exits_2_without_traceback(capsys, tmp_path):
    code, _, err = run_cli(["generate", "--base", str(tmp_path / "missing"), "--prompt", "hi"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "no such file" in err
    assert "Traceback" not in err


def test_debug_flag_shows_the_traceback(capsys, tmp_path):
    code, _, err = run_cli(["generate", "--base", str(tmp_path / "missing"), "--prompt", "hi", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "error: " in err


def test_usage_errors_keep_click_behaviour(capsys):
    code, _, err = run_cli(["no-such-verb"], capsys)
    assert code == 2 and "No such command" in err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "tuneforge", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout
