"""Shadow of the stdlib ``socketserver``: first on PYTHONPATH, it makes
``import socketserver`` give cserver (see ``cserver.shadow_path()``)."""
import sys

import cserver

sys.modules[__name__] = cserver
