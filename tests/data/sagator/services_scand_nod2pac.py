# SAGATOR example: sagator-services.txt scand() (scanner daemon with a preload library)
# reference: scand(nod2pac(),ld_preload='/usr/lib/libnod32pac.so')
# expect: gone nod2pac
from scanners import *
from srv import *

# the example, in SRV
SRV = [scand(nod2pac(),ld_preload='/usr/lib/libnod32pac.so')]
