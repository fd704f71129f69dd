# SAGATOR example: sagator-services.txt chroot_execvpe() (start an external daemon with environment variables)
# reference: chroot_execvpe('/usr/sbin/clamd',['-c','/etc/clamav.conf'], {'LANG': 'C'})
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [chroot_execvpe('/usr/sbin/clamd',['-c','/etc/clamav.conf'],
                       {'LANG': 'C'})]
