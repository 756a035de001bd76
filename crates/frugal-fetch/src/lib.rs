//! Model fetching (to be written).
