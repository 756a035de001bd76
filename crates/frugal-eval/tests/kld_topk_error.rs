//! Measures, on real models, how far the ways of saving a base are from the
//! exact KL: top-k with a tail bucket for several k, and hidden states with
//! the output matrix rounded to cheaper types (why the file keeps the base's
//! own type). Ignored by default: it needs two models and minutes. Run it with
//!
//! ```sh
//! FRUGAL_KLD_BASE=/tmp/smol-f32.gguf \
//! FRUGAL_KLD_MODEL=~/.cache/frugal/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
//! FRUGAL_KLD_TEXT=../shared/data/wikitext-2-raw/wiki.test.raw FRUGAL_KLD_CHUNKS=8 \
//! cargo test -p frugal-eval --release --test kld_topk_error -- --ignored --nocapture
//! ```

use frugal_eval::kld::math::{exact_token, extract_top_k, topk_token, BaseToken};
use frugal_formats::GgmlType;
use frugal_kernels::matmul::{matmul_f32, QMatrix, QuantizedActs};
use frugal_model::Logits;
use std::path::PathBuf;

const KS: [usize; 12] = [
    1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
];

#[test]
#[ignore = "needs FRUGAL_KLD_BASE/MODEL/TEXT; run by hand"]
fn top_k_error_against_exact() {
    let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("set {n}"));
    let base = frugal_model::load(&PathBuf::from(var("FRUGAL_KLD_BASE")), None).unwrap();
    let model = frugal_model::load(&PathBuf::from(var("FRUGAL_KLD_MODEL")), None).unwrap();
    let text = std::fs::read_to_string(var("FRUGAL_KLD_TEXT")).unwrap();
    let chunks: usize = std::env::var("FRUGAL_KLD_CHUNKS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(8);
    let ctx = 512;
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true, false);
    let bos = tok.bos_to_add();
    let nv = model.model.config.n_vocab;
    let (mut kb, mut sb) = (
        base.model.new_cache(ctx).unwrap(),
        base.model.new_state(ctx, true),
    );
    let (mut km, mut sm) = (
        model.model.new_cache(ctx).unwrap(),
        model.model.new_state(ctx, true),
    );
    let n_embd = base.model.config.n_embd;
    let wf = frugal_model::tensor_to_f32(&base.model.weights.output).unwrap();
    let heads: Vec<(GgmlType, Vec<u8>)> =
        [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0]
            .into_iter()
            .map(|ty| {
                let t = frugal_kernels::traits(ty).unwrap();
                let mut b = vec![0u8; ty.row_bytes(wf.len() as u64).unwrap() as usize];
                (t.from_float.unwrap())(&wf, &mut b);
                (ty, b)
            })
            .collect();
    let mut head_kld: Vec<Vec<f64>> = vec![Vec::new(); heads.len()];
    let mut head_secs = vec![0.0f64; heads.len()];
    let (mut kh, mut sh) = (
        base.model.new_cache(ctx).unwrap(),
        base.model.new_state(ctx, false),
    );
    let mut acts = QuantizedActs::new();
    let mut exact = Vec::new();
    let mut approx: Vec<Vec<f64>> = vec![Vec::new(); KS.len()];
    let mut same_top_diff = 0usize;
    for c in 0..chunks {
        let mut batch = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            batch[0] = b;
        }
        kb.clear();
        km.clear();
        let bl = base
            .model
            .forward(&batch, &mut kb, &mut sb, Logits::All)
            .unwrap();
        let ml = model
            .model
            .forward(&batch, &mut km, &mut sm, Logits::All)
            .unwrap();
        // Hidden states of the scored rows, through each output type.
        kh.clear();
        let first = ctx / 2;
        let n = ctx - 1 - first;
        let hid = base
            .model
            .forward_hidden(&batch, &mut kh, &mut sh, Logits::From(first))
            .unwrap();
        for (i, (ty, w)) in heads.iter().enumerate() {
            let q = QMatrix::new(*ty, nv, n_embd, w);
            let mut l = vec![0.0f32; n * nv];
            let t = std::time::Instant::now();
            matmul_f32(&q, &hid[..n * n_embd], n, &mut acts, &mut l);
            head_secs[i] += t.elapsed().as_secs_f64();
            for j in 0..n {
                let target = tokens[c * ctx + first + j + 1];
                let m = &ml[(first + j) * nv..(first + j + 1) * nv];
                let e = exact_token(&l[j * nv..(j + 1) * nv], m, target).unwrap();
                head_kld[i].push(e.kld);
            }
        }
        for j in ctx / 2..ctx - 1 {
            let target = tokens[c * ctx + j + 1];
            let (b, m) = (&bl[j * nv..(j + 1) * nv], &ml[j * nv..(j + 1) * nv]);
            let e = exact_token(b, m, target).unwrap();
            exact.push(e.kld);
            for (i, &k) in KS.iter().enumerate() {
                let (mut ids, mut lps, mut s) = (vec![], vec![], vec![]);
                let (t, tail) = extract_top_k(b, k, target, &mut ids, &mut lps, &mut s).unwrap();
                let bt = BaseToken {
                    ids: &ids,
                    lps: &lps,
                    target_lp: t,
                    tail_lp: tail,
                };
                let a = topk_token(bt, m, target, &mut s).unwrap();
                if a.same_top != e.same_top {
                    same_top_diff += 1;
                }
                approx[i].push(a.kld);
            }
        }
    }
    let n = exact.len() as f64;
    let mean_exact = exact.iter().sum::<f64>() / n;
    println!(
        "{} tokens scored; exact mean KLD {mean_exact:.6}; same-top disagreements {same_top_diff}",
        exact.len()
    );
    println!("| output matrix type | mean KLD | relative error of the mean | seconds per chunk (matmul) |");
    println!("|---|---|---|---|");
    for (i, (ty, _)) in heads.iter().enumerate() {
        let mean = head_kld[i].iter().sum::<f64>() / n;
        println!(
            "| {ty} | {mean:.6} | {:+.4}% | {:.3} |",
            100.0 * (mean - mean_exact) / mean_exact,
            head_secs[i] / chunks as f64
        );
    }
    println!();
    println!("| k | mean KLD (top-k) | relative error of the mean | worst token (exact − top-k) | bytes per token | 100 chunks of 512 |");
    println!("|---|---|---|---|---|---|");
    for (i, &k) in KS.iter().enumerate() {
        let mean = approx[i].iter().sum::<f64>() / n;
        let worst = exact
            .iter()
            .zip(&approx[i])
            .map(|(e, a)| e - a)
            .fold(f64::MIN, f64::max);
        let bytes = 8 + 8 * k;
        println!(
            "| {k} | {mean:.6} | {:+.3}% | {worst:.2e} | {bytes} | {:.1} MB |",
            100.0 * (mean - mean_exact) / mean_exact,
            (bytes * 255 * 100) as f64 / 1e6
        );
    }
}
