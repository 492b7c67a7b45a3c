"""``python -m service``: placeholder until the service issue lands (the README's serve command)."""

import sys

sys.exit("service not built yet: see the issue 'The service: REST search both ways ...'")
