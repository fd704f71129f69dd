# SAGATOR example: sagator-services.txt http_proxy() (HTTP proxy service)
# reference: http_proxy(SCANNERS, '127.0.0.1', 3128)
# expect: icap
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [clamd(["localhost", 3310])]

# the example, in SRV
SRV = [http_proxy(SCANNERS, '127.0.0.1', 3128)]
