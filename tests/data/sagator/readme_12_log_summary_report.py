# SAGATOR example: sagator-readme.txt 12 (reporting summaries to users: a log() scanner around the scanners)
# reference: SCANNERS=[ log(1,log.SUMMARY_REPORT, ... your scanner configuraion follows here ... ) ]
# replaced: ... your scanner configuraion follows here ... -> parsemail(clamd(['localhost', 3310]))
# expect: loads
from scanners import *
from srv import *

# the example ("..." filled in)
SCANNERS=[ log(1,log.SUMMARY_REPORT, parsemail(clamd(['localhost', 3310])) ) ]
