//! What the binary's tests share: where the test material is.

use std::path::PathBuf;

/// `../shared` beside the checkout; fails with a clear message when missing.
pub fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        dir.join("models/stories260K/stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout (see the README)"
    );
    dir
}
