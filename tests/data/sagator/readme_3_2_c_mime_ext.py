# SAGATOR example: sagator-readme.txt 3.2 c) (no attachments by name: the mime_ext scanner)
# reference: EXECUTABLES='(\.exe|\.COM|\.com|\.COM|\.pif|\.PIF|\.lnk|\.LNK|\.scr|\.SCR)' SCANNERS=[ mime_ext(EXECUTABLES) ]
# expect: loads
from scanners import *
from srv import *

# the example
EXECUTABLES='(\.exe|\.COM|\.com|\.COM|\.pif|\.PIF|\.lnk|\.LNK|\.scr|\.SCR)'
SCANNERS=[ mime_ext(EXECUTABLES) ]
