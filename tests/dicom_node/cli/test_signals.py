"""The main thread's wait for SIGTERM (``dicom_node.cli.signals``), in a subprocess: pytest keeps its own
signal handlers, and a deadlocked wait must end in a timeout, not hang the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import PROJECT

# signals landing at moments spread over the start of the wait; the old wait (a handler setting the
# threading.Event the main thread waited on) deadlocked now and then under such a loop, within 3000-20000
# rounds on this machine: rare per signal, so this is a regression check, not proof
ROUNDS = 3000


def run_python(code: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_sigterm_at_any_moment_of_the_wait_ends_it() -> None:
    stdout = run_python(
        f"""
        import os, signal, threading, time
        from dicom_node.cli.signals import SignalPipe

        for i in range({ROUNDS}):
            with SignalPipe() as signals:
                # the signal lands before, as or after the wait begins
                shot = threading.Timer(0.00005 * (i % 20), os.kill, (os.getpid(), signal.SIGTERM))
                shot.start()
                assert signals.wait_for_stop() == signal.SIGTERM
                shot.join()
        print("rounds", {ROUNDS})
        """
    )
    assert stdout.split() == ["rounds", str(ROUNDS)]


def test_other_signals_are_handled_in_the_main_thread_and_handlers_are_restored() -> None:
    stdout = run_python(
        """
        import os, signal, threading
        from dicom_node.cli.signals import SignalPipe

        before = signal.getsignal(signal.SIGTERM)
        seen = []
        with SignalPipe(others=(signal.SIGUSR1,)) as signals:
            os.kill(os.getpid(), signal.SIGUSR1)  # before the wait: kept on the pipe, not lost
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGINT)
            got = signals.wait_for_stop({signal.SIGUSR1: lambda: seen.append(threading.current_thread().name)})
        print(got == signal.SIGINT, seen, signal.getsignal(signal.SIGTERM) is before)
        """
    )
    assert stdout.strip() == "True ['MainThread', 'MainThread'] True"
