//! `frugal`: run, measure and (later) shrink LLMs on the CPU you have.
//!
//! Each subcommand lives in `cmd/`; they share model loading and thread setup
//! from `common.rs`.

mod cmd;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "frugal",
    version,
    about = "Run, measure and shrink LLMs on the CPU you have",
    long_about = "frugal runs Llama-family models (Llama, SmolLM2, Qwen2, llama2.c) from GGUF, \
Hugging Face safetensors folders or llama2.c checkpoints, on the CPU.\n\n\
Every --model accepts a path or a known name (see `frugal fetch --list`), fetched on first use."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a known model into the cache and print its path.
    Fetch(cmd::fetch::Args),
    /// Show a model's architecture, hyper-parameters, tokenizer and tensors.
    Inspect(cmd::inspect::Args),
    /// Generate text from a prompt, streaming tokens, then report speed.
    Generate(cmd::generate::Args),
    /// Chat interactively using the model's chat template.
    Chat(cmd::chat::Args),
    /// Perplexity of a text file, with llama.cpp's method.
    Perplexity(cmd::perplexity::Args),
    /// Measure prefill and decode speed, like llama-bench.
    Bench(cmd::bench::Args),
    /// Write a model as GGUF or as a Hugging Face safetensors folder.
    Convert(cmd::convert::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Convert(a) => cmd::convert::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
