# SAGATOR example: sagator-readme.txt 4 (an interscanner attached to a buffer scanner)
# reference: parsemail(string_scan(...))
# replaced: ... -> [('Test.String', 'forbidden text')]
# expect: loads
from scanners import *
from srv import *

# the example, as the scanner list ("..." filled in)
SCANNERS = [parsemail(string_scan([('Test.String', 'forbidden text')]))]
