# SAGATOR example: sagator-readme.txt 3.1 d) (http scanning service)
# reference: SRV=[ collector('0.0.0.0',28), http_proxy(SCANNERS,'0.0.0.0',3128) ]
# expect: icap
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [clamd(["localhost", 3310])]

# the example
SRV=[ collector('0.0.0.0',28), http_proxy(SCANNERS,'0.0.0.0',3128) ]
