"""Runs the trainer and records its exit code in a file: the local backend's process group leader.

Run by path (``python local_wrapper.py EXIT_FILE CMD...``) so it imports nothing but the
standard library. A manager restarted after a crash is no longer the parent of this process
and cannot wait() for it; the exit-code file is how it still learns how the attempt ended.
"""

import os
import signal
import subprocess
import sys


def _ignore(_signum, _frame):
    # A handler (not SIG_IGN, which exec would pass on to the trainer): the wrapper outlives a
    # SIGTERM to the group so it can record the trainer's code; SIGKILL still ends it.
    return None


def main(argv):
    exit_file, cmd = argv[0], argv[1:]
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    child = subprocess.Popen(cmd)
    code = child.wait()
    code = 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as a shell reports it
    tmp = exit_file + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(code))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, exit_file)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
