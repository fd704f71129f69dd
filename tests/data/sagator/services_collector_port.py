# SAGATOR example: sagator-services.txt collector() (statistics collector listening on a port)
# reference: collector('0.0.0.0',28)
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [collector('0.0.0.0',28)]
