"""schemathesis hooks for tests/contract/run_schemathesis.sh (SCHEMATHESIS_HOOKS=hooks).

tus PATCH bodies are `application/offset+octet-stream`, a media type
schemathesis cannot generate by itself: any bytes are a valid body.
"""

from hypothesis import strategies as st

import schemathesis

schemathesis.openapi.media_type("application/offset+octet-stream", st.binary(max_size=4096))
