# SAGATOR example: sagator-services.txt webq_jinja() (web quarantine; no example given: its usage line, positionally)
# reference: webq_jinja(host='0.0.0.0', port=8008, db, log='/var/log/sagator/webq.log', scanner, userconv)
# replaced: host='0.0.0.0', port=8008, db, log='/var/log/sagator/webq.log', scanner, userconv -> '0.0.0.0', 8008, db.sqlite(), '/var/log/sagator/webq.log', clamd(['localhost', 3310]), ['^([^@]+)$', r'\1@example.com']
# expect: loads
from scanners import *
from srv import *

# the usage line with values, positionally
SRV = [webq_jinja('0.0.0.0', 8008, db.sqlite(), '/var/log/sagator/webq.log', clamd(['localhost', 3310]), ['^([^@]+)$', r'\1@example.com'])]
