# SAGATOR example: sagator-services.txt rlimit() (resource limit virtual service)
# reference: rlimit(AS=30000000)
# expect: pending rlimit
from scanners import *
from srv import *

# the example, in SRV
SRV = [rlimit(AS=30000000)]
