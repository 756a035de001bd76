//! Fetch known models into the cache and print their paths.
//!
//! ```text
//! cargo run -p frugal-fetch --example fetch -- [--quiet] NAME...
//! ```
//! With no names, lists the known models and the cache folder.

use std::process::ExitCode;

use frugal_fetch::{cache_dir, cached, fetch_with, known_models, FetchOptions};

fn main() -> ExitCode {
    let mut opts = FetchOptions::default();
    let mut names = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-q" | "--quiet" => opts.quiet = true,
            _ => names.push(arg),
        }
    }
    if names.is_empty() {
        println!("cache: {}", cache_dir().display());
        for m in known_models() {
            let state = match cached(m.name, &opts) {
                Some(p) => format!("fetched: {}", p.display()),
                None => "not fetched".to_string(),
            };
            println!("{:14} {} [{state}]", m.name, m.description);
        }
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for name in &names {
        match fetch_with(name, &opts) {
            Ok(path) => println!("{name}\t{}", path.display()),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
