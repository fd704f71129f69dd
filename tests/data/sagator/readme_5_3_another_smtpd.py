# SAGATOR example: sagator-readme.txt 5.3 (another smtpd: sagator as the main smtpd on port 25; no scanners given)
# reference: SMTP_SERVER=('127.0.0.1',26) SRV = [ smtpd('YourExternalIP',25) ]
# replaced: 'YourExternalIP' -> '192.0.2.25'
# expect: loads
from scanners import *
from srv import *

# given: what the example uses (the service takes SCANNERS)
SCANNERS = [parsemail(clamd(["localhost", 3310]))]

# the example (the placeholder is a documentation address, RFC 5737)
SMTP_SERVER=('127.0.0.1',26)
SRV = [ smtpd('192.0.2.25',25) ]
