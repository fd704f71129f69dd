# SAGATOR example: sagator-readme.txt 12 (a custom report in the reporter() service)
# reference: reporter( begin='''\ Subject: Report mail This is a report of your undelivered emails. ''', body=''' $DATETIME Sender: $SENDER [$SENTBY_IP] Status: $VIRNAME $STATUS [$SCANNER_NAME=$LEVEL] ''', end=''' End of report ''', include='@my-domain.com$', exclude='^root@' )
# expect: loads
from scanners import *
from srv import *

# the example, in SRV (the reference shows it on one line: the line breaks are the templates')
SRV = [
reporter(
begin='''\
Subject: Report mail

This is a report of your undelivered emails.
''',
body='''
$DATETIME Sender: $SENDER [$SENTBY_IP]
Status: $VIRNAME $STATUS [$SCANNER_NAME=$LEVEL]
''',
end='''
End of report
''',
include='@my-domain.com$',
exclude='^root@'
)
]
