"""Test samples every tier uses: the EICAR test string (split so no scanner flags this file)."""

from __future__ import annotations

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS" + b"-TEST-FILE!$H+H*"
EICAR_TEXT = EICAR.decode("ascii")
