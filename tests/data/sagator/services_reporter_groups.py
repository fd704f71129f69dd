# SAGATOR example: sagator-services.txt reporter() (report only to the admin of each domain: groups)
# reference: reporter(groups=[ ['@mydomain1.com$', 'admin@mydomain1.com'], ['@domain2.sk$', 'admin@domain2.sk'], ['.', 'root@localhost'] # send other to root ])
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [
reporter(groups=[
  ['@mydomain1.com$', 'admin@mydomain1.com'],
  ['@domain2.sk$', 'admin@domain2.sk'],
  ['.', 'root@localhost'] # send other to root
])
]
