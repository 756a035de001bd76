//! `frugal chat`: an interactive conversation using the model's chat template.
//!
//! Each turn renders the whole conversation with the template, keeps the KV
//! cache for the prefix that is unchanged, and runs only the new tokens.

use crate::common::{ModelArgs, SamplingArgs};
use anyhow::Result;
use frugal_model::Sampler;
use frugal_tokenizer::chat::{render_chat_ref, ChatMessage, ChatTemplate};
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n: usize,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print generation speed after each reply.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sampler_cfg = a.sampling.config()?;
    let lm = a.model.load(false)?;
    let tok = &lm.tokenizer;
    let model = &lm.model;
    let template = ChatTemplate::from_metadata(&lm.source.metadata)?;
    let n_ctx = a.ctx.unwrap_or(model.config.n_ctx_train.min(4096));
    let mut kv = model.new_cache_typed(n_ctx, a.model.kv_type)?;
    let mut st = model.new_state(512, false);
    let mut sampler = Sampler::new(sampler_cfg);
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::system(s));
    }
    // Tokens whose keys and values are in the cache, in order.
    let mut cached: Vec<u32> = Vec::new();

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Chatting with {} (Ctrl-D to quit).", lm.path.display());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::user(line.trim()));
        let rendered = render_chat_ref(&template, &messages, true);
        let tokens = tok.encode(&rendered, true, true);
        if tokens.len() + 1 >= n_ctx {
            messages.pop();
            eprintln!(
                "error: the conversation no longer fits in the context of {n_ctx} tokens; \
                 start again with a larger --ctx"
            );
            continue;
        }
        // Reuse the cached prefix; run only what changed.
        let common = cached
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        kv.truncate(common);
        cached.truncate(common);
        let new = &tokens[common..];

        let mut stream = tok.stream_decoder();
        let mut reply = String::new();
        let mut reply_tokens = Vec::new();
        let budget = a.n.min(n_ctx - tokens.len());
        let mut out = std::io::stdout().lock();
        let stats = frugal_infer::generate(
            model,
            new,
            budget,
            &mut sampler,
            &mut kv,
            &mut st,
            |t| tok.is_eog(t),
            |t| {
                reply_tokens.push(t);
                let piece = stream.push_token(tok, t);
                reply.push_str(&piece);
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            },
        )?;
        let rest = stream.finish();
        reply.push_str(&rest);
        writeln!(out, "{rest}")?;
        cached.extend_from_slice(new);
        // The cache holds every reply token that was run through the model
        // (the last sampled one is not, unless generation stopped at EOG).
        let run = kv.len() - cached.len();
        cached.extend_from_slice(&reply_tokens[..run]);
        messages.push(ChatMessage::assistant(reply.trim()));
        if a.verbose {
            eprintln!(
                "[prompt {} new tokens at {:.1} t/s, reply {} tokens at {:.1} t/s]",
                stats.prompt_tokens,
                stats.prompt_tps(),
                stats.gen_tokens,
                stats.gen_tps()
            );
        }
    }
    Ok(())
}
