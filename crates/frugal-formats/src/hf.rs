//! HF (to be written).
