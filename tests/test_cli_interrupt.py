"""Ctrl-C stops a ``radiogen`` command with status 130, also when Python ignores the
KeyboardInterrupt where it lands (inside a weakref callback or a ``__del__``: "Exception
ignored in ...", after which the work would go on to the end and exit 0)."""
import os
import signal
import weakref

from napari_radiogen.core.progress import Progress, interrupted, run


def _swallowing_step(steps):
    """A core step during which the Ctrl-C arrives inside a weakref callback."""
    steps.append("start")
    yield Progress("work", 0, 3, "")

    class Obj:
        pass
    o = Obj()

    def callback(_ref):
        os.kill(os.getpid(), signal.SIGINT)   # its KeyboardInterrupt is raised here: ignored
        for _ in range(1000):                 # let the handler run inside the callback
            pass
    refs = [weakref.ref(o, callback)]         # the callback runs when o goes
    del o
    refs.clear()
    steps.append("after the interrupt")
    yield Progress("work", 1, 3, "")
    steps.append("finished")
    yield "result"


def test_an_interrupt_python_ignored_still_stops_the_command(monkeypatch, tmp_path, capsys):
    from napari_radiogen import cli
    from napari_radiogen.cli_cmds import info
    steps = []

    def fake_run(args):
        run(_swallowing_step(steps))
        print("all done")
        return 0
    monkeypatch.setattr(info, "run", fake_run)
    assert cli.main(["info", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    assert steps == ["start", "after the interrupt"]       # stopped at the next item
    assert "all done" not in out
    assert "radiogen: interrupted" in err and "Exception ignored" not in err
    # the flag and the handlers are the process's again
    assert not interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_command_that_handles_its_interrupt_keeps_its_own_message(monkeypatch, tmp_path,
                                                                    capsys):
    """A command that catches the KeyboardInterrupt itself and returns 130 (training: "the
    last good checkpoint is in ...") is not told "interrupted" a second time."""
    from napari_radiogen import cli
    from napari_radiogen.cli_cmds import info
    import sys

    def own_handling(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**6):
                pass
        except KeyboardInterrupt:
            print("radiogen: interrupted; resume with --resume", file=sys.stderr)
            return 130
        return 0
    monkeypatch.setattr(info, "run", own_handling)
    assert cli.main(["info", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count("interrupted") == 1 and "--resume" in err
    assert not interrupted()
