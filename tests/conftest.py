"""Session-wide test setup."""

from __future__ import annotations

import signal

# A test runner started in the background (as CI may be) inherits SIGINT as *ignored*, and ignored
# signals stay ignored across exec, so the child processes that Ctrl-C tests signal would never see
# KeyboardInterrupt. A handled signal is reset to its default on exec: handle it here.
signal.signal(signal.SIGINT, signal.default_int_handler)
