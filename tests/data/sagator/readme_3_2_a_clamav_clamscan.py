# SAGATOR example: sagator-readme.txt 3.2 a) (use only the clamscan binary to scan for viruses)
# reference: SCANNERS=[ clamav(['/usr/bin/clamscan','--stdout','--infected', '--disable-summary','-r','--mbox']) ]
# expect: loads
from scanners import *
from srv import *

# the example
SCANNERS=[ clamav(['/usr/bin/clamscan','--stdout','--infected', '--disable-summary','-r','--mbox']) ]
