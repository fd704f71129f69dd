# SAGATOR example: sagator-readme.txt 5.2 (Sendmail: sagator runs as a milter filter; no scanners given)
# reference: milter("sagator","inet:3333@127.0.0.1")
# expect: loads
from scanners import *
from srv import *

# given: what the example uses (the service takes SCANNERS)
SCANNERS = [parsemail(clamd(["localhost", 3310]))]

# the example, in SRV
SRV = [milter("sagator","inet:3333@127.0.0.1")]
