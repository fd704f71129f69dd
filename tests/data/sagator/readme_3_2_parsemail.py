# SAGATOR example: sagator-readme.txt 3.2 (subscanners: parsed files tested by clamd)
# reference: parsemail(clamd(['localhost',3310]))
# expect: loads
from scanners import *
from srv import *

# the example, as the scanner list
SCANNERS = [parsemail(clamd(['localhost',3310]))]
