# mailsift benchmark config (bench/run.sh): the pipeline of issue item 11,
# parsemail + attach_name + regexp_scan, reinjecting into smtp-sink.
#
# Overridable from the environment (bench/run.sh sets them):
#   MAILSIFT_BENCH_STATE   state directory      (default /tmp/mailsift-bench/state)
#   MAILSIFT_BENCH_PORT    mailsift listen port (default 10024)
#   MAILSIFT_BENCH_SINK    smtp-sink port       (default 10025)
import os

from mailsift import *

STATE_DIR = os.environ.get("MAILSIFT_BENCH_STATE", "/tmp/mailsift-bench/state")
USER = None  # the benchmark runs as whoever starts it
SMTP_SERVER = ("127.0.0.1", int(os.environ.get("MAILSIFT_BENCH_SINK", "10025")))

SCANNERS = [
    parsemail(attach_name([("Policy.Executable", r"\.(exe|com|scr|pif|bat)$")])),
    parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])),
]

SRV = [smtpd(SCANNERS, "127.0.0.1", int(os.environ.get("MAILSIFT_BENCH_PORT", "10024")))]
