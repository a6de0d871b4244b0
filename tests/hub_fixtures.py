"""The hub-faithful local copies the loader tests run on.

The generator lives in the package (lnsub.orchestrator.rehearsal.hubcopies), because `lnsub rehearsal`
writes the same copies, at a larger size, for the mBERT-shaped rehearsal; the tests import it from here.
"""

from lnsub.orchestrator.rehearsal.hubcopies import (  # noqa: F401 (re-exported for the tests)
    LANGUAGES, SIZES, vocabulary, wikiann_rows, wikipedia_rows, write_hub_fixtures, xnli_rows)
