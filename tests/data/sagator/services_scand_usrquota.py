# SAGATOR example: sagator-services.txt scand() (scanner daemon running its scanner as root)
# reference: scand(usrquota('mydomain.sk'),as_root=True)
# expect: gone usrquota
from scanners import *
from srv import *

# the example, in SRV
SRV = [scand(usrquota('mydomain.sk'),as_root=True)]
