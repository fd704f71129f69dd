# SAGATOR example: sagator-readme.txt 3.2 b) (adding the spamassassin tester)
# reference: SCANNERS=SCANNERS+[ spamassassind(['localhost',783]) ]
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [clamd(["localhost", 3310])]

# the example
SCANNERS=SCANNERS+[ spamassassind(['localhost',783]) ]
