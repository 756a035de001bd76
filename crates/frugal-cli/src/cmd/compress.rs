//! `frugal compress --recipe FILE`: structured pruning, low-rank
//! factorization, pruning and quantization composed from one TOML recipe,
//! as llm-compressor's recipes compose modifiers.
//!
//! Stages run in a fixed order: structured pruning (the shapes change, so
//! it goes first), then low-rank factorization, then pruning and
//! quantization together in one calibrated layer-by-layer pass (pruning
//! first at each matrix, then rounding, SparseGPT and GPTQ sharing their
//! Hessian sweep). Each stage is the matching subcommand run on the
//! previous stage's model; intermediate models are written next to the
//! output and removed at the end, failed or not.

use super::{lowrank, prune, quantize};
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(after_help = "\
A recipe (TOML; every section optional, the order of the sections does not matter):

  calib = \"valid.txt\"        # calibration text, for every stage that needs it
  calib_tokens = 65536
  calib_ctx = 512

  [structured]               # frugal prune --shrink / --heads / --ffn / --layers
  method = \"sparsegpt\"       # magnitude | wanda | sparsegpt (refit)
  shrink = 0.2               # or heads = 3, ffn = 0.3, layers = 2

  [lowrank]                  # frugal lowrank
  method = \"whitened\"        # svd | whitened
  ratio = 0.2                # or energy = 0.95

  [prune]                    # frugal prune, unstructured or N:M
  method = \"sparsegpt\"       # magnitude | wanda | sparsegpt
  sparsity = 0.5             # or pattern = \"2:4\", owl = true
  output = false             # true: prune the output matrix too (--prune-output)

  [quantize]                 # the block matrices' type; with [prune], in the same pass
  type = \"Q4_K\"              # any --type of frugal quantize; \"sparse\" with [prune]
  method = \"gptq\"            # rtn | gptq
  output_type = \"Q6_K\"

Stages run as: structured → lowrank → prune + quantize (one pass). With [lowrank], [quantize] \
sets the factors' type (round to nearest) and [prune] is refused.

Example:
  frugal compress -m model-f32.gguf --recipe recipe.toml -o small.gguf")]
pub struct Args {
    /// Model to compress (path or known name). A float model gives the best results.
    #[arg(short, long)]
    pub model: String,
    /// The recipe (TOML): which stages, with which settings.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Output GGUF file (written under a temporary name, then renamed).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A recipe file. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub calib: Option<PathBuf>,
    pub calib_tokens: Option<usize>,
    pub calib_ctx: Option<usize>,
    pub structured: Option<Structured>,
    pub lowrank: Option<LowRank>,
    pub prune: Option<Prune>,
    pub quantize: Option<Quantize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Structured {
    pub method: Option<String>,
    pub shrink: Option<f64>,
    pub heads: Option<usize>,
    pub ffn: Option<f64>,
    pub layers: Option<usize>,
    pub damp: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowRank {
    pub method: Option<String>,
    pub ratio: Option<f64>,
    pub energy: Option<f64>,
    pub damp: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    pub method: Option<String>,
    pub sparsity: Option<f32>,
    pub pattern: Option<String>,
    pub owl: Option<bool>,
    pub output: Option<bool>,
    pub damp: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantize {
    #[serde(rename = "type")]
    pub ty: String,
    pub method: Option<String>,
    pub output_type: Option<String>,
}

impl Recipe {
    pub fn parse(text: &str) -> Result<Recipe> {
        let r: Recipe = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if r.structured.is_none()
            && r.lowrank.is_none()
            && r.prune.is_none()
            && r.quantize.is_none()
        {
            bail!("the recipe has no stage: give [structured], [lowrank], [prune] or [quantize]");
        }
        if r.lowrank.is_some() && r.prune.is_some() {
            bail!("[lowrank] and [prune] together: frugal does not prune low-rank factors");
        }
        if let Some(q) = &r.quantize {
            if let Some(m) = q
                .method
                .as_deref()
                .filter(|m| !matches!(*m, "rtn" | "gptq"))
            {
                bail!("[quantize] method `{m}`: use rtn or gptq");
            }
            if r.lowrank.is_some() && q.method.as_deref() == Some("gptq") {
                bail!("[quantize] method gptq with [lowrank]: low-rank factors are rounded to nearest");
            }
        }
        Ok(r)
    }

    /// The subcommand lines the recipe runs, in order; `io(i)` gives stage
    /// `i`'s input and output paths.
    fn stages(
        &self,
        args: &Args,
        io: &dyn Fn(usize, usize) -> (String, String),
    ) -> Vec<Vec<String>> {
        let mut lines: Vec<Vec<String>> = Vec::new();
        let calib = |v: &mut Vec<String>| {
            if let Some(c) = &self.calib {
                v.extend(["--calib".into(), c.display().to_string()]);
            }
            if let Some(n) = self.calib_tokens {
                v.extend(["--calib-tokens".into(), n.to_string()]);
            }
            if let Some(n) = self.calib_ctx {
                v.extend(["--calib-ctx".into(), n.to_string()]);
            }
        };
        let opt = |v: &mut Vec<String>, flag: &str, x: Option<String>| {
            if let Some(x) = x {
                v.extend([flag.to_string(), x]);
            }
        };
        let n = self.structured.is_some() as usize
            + self.lowrank.is_some() as usize
            + (self.prune.is_some() || (self.quantize.is_some() && self.lowrank.is_none()))
                as usize;
        if let Some(s) = &self.structured {
            let mut v = vec!["prune".to_string()];
            opt(&mut v, "--method", s.method.clone());
            opt(&mut v, "--shrink", s.shrink.map(|x| x.to_string()));
            opt(&mut v, "--heads", s.heads.map(|x| x.to_string()));
            opt(&mut v, "--ffn", s.ffn.map(|x| x.to_string()));
            opt(&mut v, "--layers", s.layers.map(|x| x.to_string()));
            opt(&mut v, "--damp", s.damp.map(|x| x.to_string()));
            calib(&mut v);
            lines.push(v);
        }
        if let Some(l) = &self.lowrank {
            let mut v = vec!["lowrank".to_string()];
            opt(&mut v, "--method", l.method.clone());
            opt(&mut v, "--ratio", l.ratio.map(|x| x.to_string()));
            opt(&mut v, "--energy", l.energy.map(|x| x.to_string()));
            opt(&mut v, "--damp", l.damp.map(|x| x.to_string()));
            if let Some(q) = &self.quantize {
                v.extend(["--type".into(), q.ty.clone()]);
                opt(&mut v, "--output-type", q.output_type.clone());
            }
            calib(&mut v);
            lines.push(v);
        }
        match (&self.prune, &self.quantize) {
            (Some(p), q) => {
                let mut v = vec!["prune".to_string()];
                opt(&mut v, "--method", p.method.clone());
                opt(&mut v, "--sparsity", p.sparsity.map(|x| x.to_string()));
                opt(&mut v, "--pattern", p.pattern.clone());
                opt(&mut v, "--damp", p.damp.map(|x| x.to_string()));
                if p.owl == Some(true) {
                    v.push("--owl".into());
                }
                if p.output == Some(true) {
                    v.push("--prune-output".into());
                }
                if let Some(q) = q {
                    v.extend(["--type".into(), q.ty.clone()]);
                    if q.method.as_deref() == Some("gptq") {
                        v.push("--gptq".into());
                    }
                    opt(&mut v, "--output-type", q.output_type.clone());
                }
                calib(&mut v);
                lines.push(v);
            }
            (None, Some(q)) if self.lowrank.is_none() => {
                let mut v = vec!["quantize".to_string(), "--type".into(), q.ty.clone()];
                opt(&mut v, "--method", q.method.clone());
                opt(&mut v, "--output-type", q.output_type.clone());
                calib(&mut v);
                lines.push(v);
            }
            _ => {}
        }
        debug_assert_eq!(lines.len(), n);
        for (i, v) in lines.iter_mut().enumerate() {
            let (input, output) = io(i, n);
            v.extend(["-m".into(), input, "-o".into(), output]);
            if let Some(t) = args.threads {
                v.extend(["-t".into(), t.to_string()]);
            }
            if args.quiet {
                v.push("-q".into());
            }
        }
        lines
    }
}

/// The path of intermediate model `i` next to `out`.
fn intermediate(out: &Path, i: usize) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(format!(".stage{i}.tmp{}", std::process::id()));
    PathBuf::from(s)
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.recipe)
        .with_context(|| format!("reading the recipe {}", a.recipe.display()))?;
    let recipe = Recipe::parse(&text).with_context(|| format!("recipe {}", a.recipe.display()))?;
    quantize::check_writable(&a.out)?;
    let out = a.out.clone();
    let io = |i: usize, n: usize| {
        let input = if i == 0 {
            a.model.clone()
        } else {
            intermediate(&out, i - 1).display().to_string()
        };
        let output = if i + 1 == n {
            out.display().to_string()
        } else {
            intermediate(&out, i).display().to_string()
        };
        (input, output)
    };
    let lines = recipe.stages(&a, &io);
    let result = (|| {
        for (i, line) in lines.iter().enumerate() {
            if !a.quiet {
                eprintln!("stage {}/{}: frugal {}", i + 1, lines.len(), line.join(" "));
            }
            let argv = std::iter::once("frugal".to_string()).chain(line.iter().cloned());
            let cli = crate::Cli::try_parse_from(argv)
                .map_err(|e| anyhow!("stage {}: {}", i + 1, e.to_string().trim()))?;
            match cli.command {
                crate::Command::Prune(p) => prune::run(p),
                crate::Command::Quantize(q) => quantize::run(q),
                crate::Command::Lowrank(l) => lowrank::run(l),
                _ => unreachable!("recipes run prune, lowrank and quantize only"),
            }
            .with_context(|| format!("stage {} ({})", i + 1, line[0]))?;
        }
        Ok(())
    })();
    for i in 0..lines.len() {
        let _ = std::fs::remove_file(intermediate(&a.out, i));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            model: "in.gguf".into(),
            recipe: "r.toml".into(),
            out: "out.gguf".into(),
            threads: Some(2),
            quiet: true,
        }
    }

    fn lines(text: &str) -> Vec<String> {
        let r = Recipe::parse(text).unwrap();
        let io = |i: usize, n: usize| (format!("in{i}"), format!("out{i}of{n}"));
        r.stages(&args(), &io)
            .into_iter()
            .map(|l| l.join(" "))
            .collect()
    }

    #[test]
    fn prune_and_quantize_share_one_stage_after_structured() {
        let l = lines(
            r#"
            calib = "v.txt"
            [quantize]
            type = "Q4_K"
            method = "gptq"
            [prune]
            method = "sparsegpt"
            pattern = "2:4"
            [structured]
            shrink = 0.2
            "#,
        );
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(
            l[0].starts_with("prune --shrink 0.2 --calib v.txt -m in0 -o out0of2"),
            "{}",
            l[0]
        );
        assert!(
            l[1].starts_with("prune --method sparsegpt --pattern 2:4 --type Q4_K --gptq --calib v.txt -m in1 -o out1of2"),
            "{}",
            l[1]
        );
        assert!(l[1].ends_with("-t 2 -q"));
    }

    #[test]
    fn the_prune_stage_can_take_the_output_matrix() {
        let l = lines("[prune]\nsparsity = 0.5\noutput = true\n[quantize]\ntype = \"sparse\"\n");
        assert_eq!(
            l,
            vec!["prune --sparsity 0.5 --prune-output --type sparse -m in0 -o out0of1 -t 2 -q"]
        );
        let l = lines("[prune]\nsparsity = 0.5\noutput = false\n");
        assert_eq!(l, vec!["prune --sparsity 0.5 -m in0 -o out0of1 -t 2 -q"]);
    }

    #[test]
    fn lowrank_takes_the_quantize_type() {
        let l =
            lines("[lowrank]\nratio = 0.4\n[quantize]\ntype = \"Q8_0\"\noutput_type = \"Q6_K\"\n");
        assert_eq!(
            l,
            vec!["lowrank --ratio 0.4 --type Q8_0 --output-type Q6_K -m in0 -o out0of1 -t 2 -q"]
        );
        let l = lines("[quantize]\ntype = \"Q4_0\"\n");
        assert_eq!(l, vec!["quantize --type Q4_0 -m in0 -o out0of1 -t 2 -q"]);
    }

    #[test]
    fn bad_recipes_are_refused() {
        let err = |t: &str| Recipe::parse(t).unwrap_err().to_string();
        assert!(err("").contains("no stage"));
        assert!(err("[prune]\nsparsty = 0.5\n").contains("sparsty"));
        assert!(err("[lowrank]\nratio = 0.2\n[prune]\nsparsity = 0.5\n").contains("low-rank"));
        assert!(err("[quantize]\ntype = \"Q4_0\"\nmethod = \"awq\"\n").contains("rtn or gptq"));
        assert!(err("[quantize]\n").contains("type"));
    }
}
