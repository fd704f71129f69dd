# SAGATOR example: sagator-services.txt recipient_policy() (virtual recipient policy)
# reference: recipient_policy(POLICY_SCANNERS, db.sqlite())
# expect: pending recipient_policy
from scanners import *
from srv import *

# given: what the example uses
POLICY_SCANNERS = [greylist()]

# the example, in SRV
SRV = [recipient_policy(POLICY_SCANNERS, db.sqlite())]
