"""A job's prints, warnings, log records and its traceback all land in its log file."""

import subprocess
import sys


def test_everything_a_job_says_reaches_its_log(tmp_path):
    log = tmp_path / "job.log"
    code = (
        "import logging, warnings\n"
        "from advdissect.joblog import log_to\n"
        f"log_to({str(log)!r})\n"
        "print('a print')\n"
        "logging.getLogger('advdissect.x').info('a record')\n"
        "warnings.warn('a warning')\n"
        "raise ValueError('the failure')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stdout == "" and proc.stderr == ""
    text = log.read_text()
    for needle in ("a print", "INFO advdissect.x: a record", "a warning", "ValueError: the failure"):
        assert needle in text, needle
