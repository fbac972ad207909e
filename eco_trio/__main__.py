"""``python -m eco_trio``: run the command line (:mod:`eco_trio.cli`).

Ctrl-C while the program is still loading ends it quietly, with the status
a shell gives an interrupted program, instead of a traceback from the
middle of an import.  (The package's ``__init__`` loads nothing heavy, so
the imports happen here, inside the guard.)
"""

import sys

EXIT_INTERRUPTED = 130

try:
    from eco_trio.cli.main import main
except KeyboardInterrupt:
    sys.exit(EXIT_INTERRUPTED)

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
