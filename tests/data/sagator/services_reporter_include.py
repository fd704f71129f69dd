# SAGATOR example: sagator-services.txt reporter() (reporter virtual service)
# reference: reporter(include='@mydomain.sk$')
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [reporter(include='@mydomain.sk$')]
