//! KL divergence from a base model (filled in by the KLD work).
