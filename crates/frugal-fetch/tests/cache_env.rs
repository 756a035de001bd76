//! `cache_dir()` reads the environment. This binary holds a single test so
//! changing variables cannot race with other tests.

use std::path::PathBuf;

use frugal_fetch::cache_dir;

#[test]
fn cache_dir_follows_env() {
    std::env::set_var("HOME", "/home/someone");
    std::env::set_var("XDG_CACHE_HOME", "/xdg");
    std::env::set_var("FRUGAL_CACHE", "/frugal-cache");
    assert_eq!(cache_dir(), PathBuf::from("/frugal-cache"));
    std::env::remove_var("FRUGAL_CACHE");
    assert_eq!(cache_dir(), PathBuf::from("/xdg/frugal"));
    std::env::set_var("XDG_CACHE_HOME", "");
    assert_eq!(cache_dir(), PathBuf::from("/home/someone/.cache/frugal"));
    std::env::remove_var("XDG_CACHE_HOME");
    assert_eq!(cache_dir(), PathBuf::from("/home/someone/.cache/frugal"));
}
