"""
SMTP smuggling (CVE-2023-51764 class): the lax end-of-data markers that some
servers take for CRLF . CRLF.  None of them may end a message here.
"""

SMUGGLING = [
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\r",
    b"\r.\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\n\x00.\r\n",
]
