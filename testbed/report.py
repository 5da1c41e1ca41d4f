"""The command that (re-)renders a report: `python -m testbed.report FOLDER [--title T]`.

The report itself is built by `testbed.results.report`; this module only gives it the
short name the README and every report's header use.
"""

import sys

from testbed.results.report import main

if __name__ == "__main__":
    sys.exit(main())
