"""A Ctrl-C while the command line starts (Python importing mlx and the engine) ends in one line and exit code
130, never a traceback from inside an import."""
import subprocess
import sys

import pytest

from eager_mlx.cli.entry import main  # noqa: F401 (the console script's entry point exists)

# The child sends itself a SIGINT (as a Ctrl-C) `delay` seconds after main() is called: while it imports mlx.
# Python leaves SIGINT ignored when it starts with it ignored (a test run launched in the background with `&`),
# so the children put back the handler an interactive start gets.
CHILD = ("import os, signal, sys, threading; from eager_mlx.cli.entry import main; "
         "signal.signal(signal.SIGINT, signal.default_int_handler); "
         "threading.Timer(float(sys.argv.pop(1)), os.kill, (os.getpid(), signal.SIGINT)).start(); main()")


# The same, the SIGINT sent while the commands' module is being imported: always during startup.
AT_IMPORT = ("import os, signal, sys; from eager_mlx.cli.entry import main\n"
             "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
             "class Interrupt:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'eager_mlx.cli.main':\n"
             "            os.kill(os.getpid(), signal.SIGINT)\n"
             "sys.meta_path.insert(0, Interrupt()); sys.argv.pop(1); main()")


@pytest.mark.parametrize("delay", ["import", 0.02, 0.1, 0.3])
def test_ctrl_c_while_starting(tmp_path, delay):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "1"}\n')
    child = AT_IMPORT if delay == "import" else CHILD
    proc = subprocess.run([sys.executable, "-c", child, str(delay), "eval", "--data", str(data), "--model",
                           str(tmp_path / "no"), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if delay == "import" or delay < 0.1 or proc.returncode != 1:  # (1: it had already refused the missing model)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT)"), err
    else:
        assert "no such file or directory" in err, err
    assert not (tmp_path / "run").exists()


def test_the_console_script_is_the_guarded_entry():
    import tomllib

    from test_packaging import ROOT

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["eager-mlx"] == "eager_mlx.cli.entry:main"


def test_two_mlx_backends_get_a_warning(monkeypatch, capsys):
    from eager_mlx.cli import entry

    assert entry.backend_warning(["mlx-cpu"]) is None and entry.backend_warning([]) is None
    monkeypatch.setattr(entry, "_installed_backends", lambda: ["mlx-cpu", "mlx-cuda-12"])
    monkeypatch.setattr(sys, "argv", ["eager-mlx", "--version"])
    with pytest.raises(SystemExit) as e:
        entry.main()
    assert e.value.code == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: mlx-cpu and mlx-cuda-12 are installed together; they ship the same libmlx.so")


def _main_when_loading_the_commands_raises(monkeypatch, make_error) -> int:
    """Run entry.main() with the import of the commands (cli/main.py) raising `make_error()`; its exit code."""
    import builtins

    from eager_mlx.cli import entry

    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "main" or name.endswith("cli.main"):
            raise make_error()
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.delitem(sys.modules, "eager_mlx.cli.main", raising=False)
    with pytest.raises(SystemExit) as e:
        entry.main()
    return e.value.code


def test_an_mlx_without_backend_is_one_line(monkeypatch, capsys):
    def error() -> ImportError:
        return ImportError("libmlx.so: cannot open shared object file: No such file or directory (mlx)")

    assert _main_when_loading_the_commands_raises(monkeypatch, error) == 1
    assert capsys.readouterr().err.startswith("Error: MLX cannot load (libmlx.so: cannot open shared object file")


def test_a_ctrl_c_that_mlx_turns_into_an_import_error_is_an_interrupt(monkeypatch, capsys):
    def error() -> ImportError:  # what mlx's extension makes of a Ctrl-C during its initialisation
        chained = ImportError("Encountered an error while initializing the extension.")
        chained.__cause__ = KeyboardInterrupt()
        return chained

    assert _main_when_loading_the_commands_raises(monkeypatch, error) == 130
    assert capsys.readouterr().err == "interrupted (SIGINT) while starting: nothing was done\n"
