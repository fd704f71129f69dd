# SAGATOR example: sagator-services.txt chroot_execvp() (start an external daemon)
# reference: chroot_execvp('/usr/sbin/clamd','-c','/etc/clamav.conf')
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [chroot_execvp('/usr/sbin/clamd','-c','/etc/clamav.conf')]
