"""The mBERT-shaped rehearsal: a model with mBERT's architecture and hub-faithful copies of its datasets, built
locally, so the real loading path runs offline (`lnsub rehearsal`)."""
