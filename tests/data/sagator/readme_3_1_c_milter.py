# SAGATOR example: sagator-readme.txt 3.1 c) (milter service for sendmail with a statistics collector)
# reference: SRV=[ collector('0.0.0.0',28), milter(SCANNERS,"sagator","inet:3333@127.0.0.1") ]
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [parsemail(clamd(["localhost", 3310]))]

# the example
SRV=[ collector('0.0.0.0',28), milter(SCANNERS,"sagator","inet:3333@127.0.0.1") ]
