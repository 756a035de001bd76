//! KL divergence: the per-token math against hand-computed values, the
//! top-k approximation's guarantees, the statistics, and the saved-logits
//! file's round trip and refusals.

use frugal_eval::kld::logits_file::{is_logits_file, scored_per_chunk, MAGIC};
use frugal_eval::kld::math::{exact_token, extract_top_k, topk_token, BaseToken};
use frugal_eval::kld::{
    BaseChunk, ChunkData, DataRef, Expect, KldStats, LogitsHeader, LogitsReader, LogitsWriter,
    Payload, TokenStats,
};
use frugal_eval::ModelInfo;
use std::path::Path;

fn ln(v: &[f64]) -> Vec<f32> {
    v.iter().map(|p| p.ln() as f32).collect()
}

/// Deterministic pseudo-random logits (a small LCG), spread like a model's.
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            // A heavy head and a long tail.
            8.0 * u * u * u - 3.0
        })
        .collect()
}

fn extract(row: &[f32], k: usize, target: u32) -> (Vec<u32>, Vec<f32>, f32, f32) {
    let (mut ids, mut lps, mut s) = (vec![], vec![], vec![]);
    let (t, tail) = extract_top_k(row, k, target, &mut ids, &mut lps, &mut s).unwrap();
    (ids, lps, t, tail)
}

fn approx(base: &[f32], model: &[f32], k: usize, target: u32) -> TokenStats {
    let (ids, lps, t, tail) = extract(base, k, target);
    let b = BaseToken {
        ids: &ids,
        lps: &lps,
        target_lp: t,
        tail_lp: tail,
    };
    topk_token(b, model, target, &mut vec![]).unwrap()
}

#[test]
fn kl_of_known_distributions() {
    let p = [0.5, 0.25, 0.25];
    let q = [0.25, 0.5, 0.25];
    // Logits are defined up to a constant: shift the model's.
    let model: Vec<f32> = ln(&q).iter().map(|l| l + 3.0).collect();
    let s = exact_token(&ln(&p), &model, 1).unwrap();
    let want = 0.5 * (0.5f64 / 0.25).ln() + 0.25 * (0.25f64 / 0.5).ln();
    assert!((s.kld - want).abs() < 1e-6, "{} vs {want}", s.kld);
    assert!((s.nll_model - 2f64.ln()).abs() < 1e-6);
    assert!((s.nll_base - 4f64.ln()).abs() < 1e-6);
    assert!((s.p_diff - 0.25).abs() < 1e-6);
    assert!(!s.same_top);
    // KL is not symmetric.
    let r = exact_token(&ln(&q), &ln(&p), 0).unwrap();
    let want_r = 0.25 * (0.25f64 / 0.5).ln() + 0.5 * (0.5f64 / 0.25).ln();
    assert!((r.kld - want_r).abs() < 1e-6);
    // Longer rows (the vectorized path) against a direct f64 sum.
    let (b, m) = (logits(1000, 1), logits(1000, 2));
    let lse = |v: &[f32]| {
        let mx = v.iter().copied().fold(f32::MIN, f32::max) as f64;
        mx + v.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln()
    };
    let (zb, zm) = (lse(&b), lse(&m));
    let direct: f64 = b
        .iter()
        .zip(&m)
        .map(|(&x, &y)| {
            let (lp, lq) = (x as f64 - zb, y as f64 - zm);
            lp.exp() * (lp - lq)
        })
        .sum();
    let s = exact_token(&b, &m, 7).unwrap();
    assert!(
        (s.kld - direct).abs() < 1e-6 * direct.max(1e-3),
        "{} vs {direct}",
        s.kld
    );
}

#[test]
fn identical_logits_give_zero_and_same_top() {
    let row = logits(777, 9);
    let e = exact_token(&row, &row, 3).unwrap();
    assert!(e.kld.abs() < 1e-9, "{}", e.kld);
    assert!(e.same_top);
    assert_eq!(e.p_diff, 0.0);
    let a = approx(&row, &row, 16, 3);
    assert!(a.kld.abs() < 1e-6, "{}", a.kld);
    assert!(a.same_top);
    assert!(a.p_diff.abs() < 1e-6);
    let stats = KldStats {
        tokens: vec![e; 50],
        compared: true,
    };
    let r = stats.result();
    assert!(r.kld_mean.abs() < 1e-9);
    assert_eq!(r.same_top_pct, 100.0);
    assert_eq!(r.same_top_stderr_pct, 0.0);
    assert_eq!(r.rms_dp_pct, 0.0);
    assert!((r.ppl_model - r.ppl_base).abs() < 1e-9);
    assert_eq!(r.tokens_scored, 50);
}

#[test]
fn top_k_covering_the_vocabulary_is_exact() {
    for seed in 0..5 {
        let (b, m) = (logits(300, seed), logits(300, seed + 100));
        let exact = exact_token(&b, &m, 11).unwrap();
        for k in [300, 5000] {
            let a = approx(&b, &m, k, 11);
            assert!(
                (a.kld - exact.kld).abs() < 1e-5 * exact.kld.max(1e-3),
                "seed {seed} k {k}: {} vs {}",
                a.kld,
                exact.kld
            );
            assert!((a.nll_model - exact.nll_model).abs() < 1e-5);
            assert!((a.nll_base - exact.nll_base).abs() < 1e-5);
            assert_eq!(a.same_top, exact.same_top);
        }
    }
}

#[test]
fn tail_bucket_is_a_lower_bound_that_tightens_with_k() {
    let (b, m) = (logits(500, 3), logits(500, 4));
    let exact = exact_token(&b, &m, 0).unwrap().kld;
    assert!(exact > 0.01);
    let mut last = 0.0;
    for k in [1, 2, 4, 16, 64, 256, 499, 500] {
        let a = approx(&b, &m, k, 0).kld;
        assert!(a <= exact + 1e-6, "k {k}: {a} > exact {exact}");
        assert!(a >= last - 1e-6, "k {k}: {a} < {last} at a smaller k");
        last = a;
    }
    assert!((last - exact).abs() < 1e-5);
    // By hand: p = [.5 .3 .1 .1], q = [.4 .3 .2 .1], k = 2 merges the last two.
    let (p, q) = (ln(&[0.5, 0.3, 0.1, 0.1]), ln(&[0.4, 0.3, 0.2, 0.1]));
    let want = 0.5 * (0.5f64 / 0.4).ln() + 0.2 * (0.2f64 / 0.3).ln();
    let a = approx(&p, &q, 2, 2);
    assert!((a.kld - want).abs() < 1e-6, "{} vs {want}", a.kld);
    // A model that puts its mass outside the base's top k is still seen.
    let q2 = ln(&[0.05, 0.05, 0.45, 0.45]);
    assert!(approx(&p, &q2, 2, 2).kld > 0.5);
}

#[test]
fn statistics_follow_llama_cpp_definitions() {
    let t = |kld: f64, same: bool, dp: f64| TokenStats {
        kld,
        nll_model: 1.0 + kld,
        nll_base: 1.0,
        p_diff: dp,
        same_top: same,
    };
    let s = KldStats {
        tokens: vec![
            t(0.1, true, 0.1),
            t(0.2, true, -0.1),
            t(0.3, false, 0.1),
            t(0.4, true, -0.1),
        ],
        compared: true,
    };
    let r = s.result();
    assert!((r.kld_mean - 0.25).abs() < 1e-12);
    assert!((r.kld_median - 0.25).abs() < 1e-12);
    assert!((r.kld_max - 0.4).abs() < 1e-12);
    assert!((r.kld_p99 - 0.397).abs() < 1e-12);
    // sample sd of .1 .2 .3 .4 is sqrt(1/60); stderr = that / 2
    assert!((r.kld_stderr - (1.0f64 / 60.0).sqrt() / 2.0).abs() < 1e-12);
    assert_eq!(r.same_top_pct, 75.0);
    assert!((r.same_top_stderr_pct - 100.0 * (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-9);
    assert!((r.rms_dp_pct - 10.0).abs() < 1e-9);
    assert!(r.dp_mean_pct.abs() < 1e-12);
    assert!((r.ln_ppl_ratio - 0.25).abs() < 1e-12);
    assert!((r.ppl_base - 1f64.exp()).abs() < 1e-12);
    assert!((r.ppl_model - 1.25f64.exp()).abs() < 1e-12);
}

fn info() -> ModelInfo {
    ModelInfo {
        label: "base-f32".into(),
        path: "base.gguf".into(),
        sha256: "ab".repeat(32),
        file_bytes: 1,
        arch: "llama".into(),
        format: "gguf".into(),
        params: 1,
        tensor_bytes: 4,
        bpw: 32.0,
    }
}

const VOCAB: usize = 50;
const CTX: usize = 16;

fn header(n_chunks: usize, k: usize) -> LogitsHeader {
    LogitsHeader {
        n_vocab: VOCAB,
        ctx: CTX,
        n_chunks,
        payload: Payload::TopK { k },
        bos: Some(1),
        data: DataRef {
            path: "wiki.test.raw".into(),
            sha256: "cd".repeat(32),
        },
        base: info(),
        frugal_version: "test".into(),
    }
}

fn tokens(n_chunks: usize) -> Vec<u32> {
    (0..n_chunks * CTX)
        .map(|i| (i * 7 % VOCAB) as u32)
        .collect()
}

/// A chunk as the base would save it, from pseudo-random rows.
fn chunk(c: u64, k: usize) -> BaseChunk {
    let mut out = BaseChunk::new(k);
    let mut s = vec![];
    for j in 0..scored_per_chunk(CTX) {
        let row = logits(VOCAB, c * 100 + j as u64);
        let (t, tail) =
            extract_top_k(&row, k, j as u32, &mut out.ids, &mut out.lps, &mut s).unwrap();
        out.target_lp.push(t);
        out.tail_lp.push(tail);
    }
    out
}

fn write_file(path: &Path, n_chunks: usize, k: usize) -> Vec<BaseChunk> {
    let mut w = LogitsWriter::create(path, header(n_chunks, k), &tokens(n_chunks), None).unwrap();
    let chunks: Vec<BaseChunk> = (0..n_chunks as u64).map(|c| chunk(c, k)).collect();
    for c in &chunks {
        w.write_topk(c).unwrap();
    }
    w.finish().unwrap();
    chunks
}

fn open_err(path: &Path) -> String {
    match LogitsReader::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn logits_file_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("base.logits");
    let chunks = write_file(&p, 3, 8);
    assert!(is_logits_file(&p));
    assert!(!is_logits_file(d.path()));
    // Only the finished file is left.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    let mut r = LogitsReader::open(&p).unwrap();
    let h = r.header();
    assert_eq!((h.n_vocab, h.ctx, h.n_chunks), (VOCAB, CTX, 3));
    assert_eq!(h.payload, Payload::TopK { k: 8 });
    assert!(r.output_matrix().is_none());
    assert_eq!(h.bos, Some(1));
    assert_eq!(h.base.sha256, info().sha256);
    assert_eq!(h.base.label, "base-f32");
    assert_eq!(r.tokens(), &tokens(3)[..]);
    r.check_tokens(&tokens(3), 3).unwrap();
    let mut got = ChunkData::Hidden(vec![]);
    for want in &chunks {
        r.read_chunk(&mut got).unwrap();
        assert_eq!(got, ChunkData::TopK(want.clone()));
    }
    let e = r.read_chunk(&mut got).unwrap_err().to_string();
    assert!(e.contains("only 3 chunks"), "{e}");
    // The size is what the format promises: 8 + 8k bytes per scored token.
    let per_chunk = scored_per_chunk(CTX) as u64 * (8 + 8 * 8) + 32;
    let len = std::fs::metadata(&p).unwrap().len();
    let json = serde_json::to_vec(&header(3, 8)).unwrap().len() as u64;
    assert_eq!(len, 16 + json + 3 * CTX as u64 * 4 + 32 + 3 * per_chunk);
}

#[test]
fn damaged_files_are_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("base.logits");
    write_file(&p, 2, 4);
    let good = std::fs::read(&p).unwrap();
    let q = d.path().join("bad.logits");

    // Truncated anywhere: the length check names it before anything is read.
    for cut in [0, 5, 15, 40, good.len() / 2, good.len() - 1] {
        std::fs::write(&q, &good[..cut]).unwrap();
        let e = open_err(&q);
        assert!(
            e.contains("truncated") && e.contains("bad.logits"),
            "cut {cut}: {e}"
        );
    }
    // Trailing garbage.
    let mut long = good.clone();
    long.extend_from_slice(b"xx");
    std::fs::write(&q, &long).unwrap();
    assert!(open_err(&q).contains("trailing"));
    // Wrong magic.
    let mut m = good.clone();
    m[0] = b'G';
    std::fs::write(&q, &m).unwrap();
    assert!(open_err(&q).contains("bad magic"));
    // A newer version.
    let mut v = good.clone();
    v[8] = 9;
    std::fs::write(&q, &v).unwrap();
    assert!(open_err(&q).contains("version 9"));
    // A header claiming an enormous file: refused by size, nothing allocated.
    let hlen = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&good[16..16 + hlen]).unwrap();
    h["n_chunks"] = serde_json::json!(1u64 << 40);
    let json = serde_json::to_vec(&h).unwrap();
    let mut big = good[..12].to_vec();
    big.extend_from_slice(&(json.len() as u32).to_le_bytes());
    big.extend_from_slice(&json);
    big.extend_from_slice(&good[16 + hlen..]);
    std::fs::write(&q, &big).unwrap();
    let e = open_err(&q);
    assert!(e.contains("truncated") || e.contains("overflow"), "{e}");
    // A header length past the end.
    let mut hl = good.clone();
    hl[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&q, &hl).unwrap();
    assert!(open_err(&q).contains("header of"));
    // Garbage JSON.
    let mut gj = good.clone();
    gj[16] = b'!';
    std::fs::write(&q, &gj).unwrap();
    assert!(open_err(&q).contains("corrupt header"));
    // A flipped token: the header checksum catches it.
    let mut ft = good.clone();
    ft[16 + hlen] ^= 1;
    std::fs::write(&q, &ft).unwrap();
    assert!(open_err(&q).contains("checksum"));
    // A flipped byte in the second chunk: caught when that chunk is read.
    let mut fc = good.clone();
    let n = fc.len();
    fc[n - 40] ^= 0x40;
    std::fs::write(&q, &fc).unwrap();
    let mut r = LogitsReader::open(&q).unwrap();
    let mut c = ChunkData::Hidden(vec![]);
    r.read_chunk(&mut c).unwrap();
    let e = r.read_chunk(&mut c).unwrap_err().to_string();
    assert!(e.contains("chunk 2") && e.contains("checksum"), "{e}");
}

#[test]
fn mismatched_runs_are_refused_naming_the_difference() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("base.logits");
    write_file(&p, 2, 4);
    let r = LogitsReader::open(&p).unwrap();
    let ok = Expect {
        n_vocab: VOCAB,
        ctx: CTX,
        bos: Some(1),
        data_sha256: "cd".repeat(32),
        chunks: 2,
    };
    r.header().check_compatible(&p, &ok).unwrap();
    let err = |f: &dyn Fn(&mut Expect)| {
        let mut e = ok.clone();
        f(&mut e);
        r.header().check_compatible(&p, &e).unwrap_err().to_string()
    };
    let e = err(&|e| e.n_vocab = 51);
    assert!(
        e.contains("vocabulary") && e.contains("50") && e.contains("51"),
        "{e}"
    );
    let e = err(&|e| e.ctx = 32);
    assert!(e.contains("--ctx 16") && e.contains("--ctx 32"), "{e}");
    let e = err(&|e| e.bos = None);
    assert!(e.contains("BOS"), "{e}");
    let e = err(&|e| e.data_sha256 = "ef".repeat(32));
    assert!(
        e.contains("text mismatch") && e.contains("wiki.test.raw"),
        "{e}"
    );
    let e = err(&|e| e.chunks = 3);
    assert!(e.contains("holds 2 chunks"), "{e}");
    // Different tokens (another tokenizer): the first difference is named.
    let mut t = tokens(2);
    t[CTX + 5] = (t[CTX + 5] + 1) % VOCAB as u32;
    let e = r.check_tokens(&t, 2).unwrap_err().to_string();
    assert!(e.contains("chunk 2, position 5"), "{e}");
    r.check_tokens(&t, 1).unwrap();
    let e = r.check_tokens(&t[..20], 2).unwrap_err().to_string();
    assert!(e.contains("token mismatch"), "{e}");
}

#[test]
fn failed_writes_leave_no_file() {
    let d = tempfile::tempdir().unwrap();
    let create =
        |p: &Path, n: usize, k: usize| LogitsWriter::create(p, header(n, k), &tokens(n), None);
    // A folder that does not exist: an error naming the path.
    let p = d.path().join("missing/base.logits");
    let e = create(&p, 1, 4).err().unwrap().to_string();
    assert!(e.contains("missing"), "{e}");
    // Abandoned midway (an error in the run): nothing left.
    let p = d.path().join("base.logits");
    let mut w = create(&p, 2, 4).unwrap();
    w.write_topk(&chunk(0, 4)).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    // Finished with a chunk missing: an error, and nothing left.
    let mut w = create(&p, 2, 4).unwrap();
    w.write_topk(&chunk(0, 4)).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("1 of 2 chunks"), "{e}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    // A chunk of the wrong shape or kind is refused.
    let mut w = create(&p, 1, 4).unwrap();
    assert!(w.write_topk(&chunk(0, 3)).is_err());
    assert!(w.write_hidden(&[0.0; 7]).is_err());
    drop(w);
    // k larger than the vocabulary is refused up front.
    assert!(create(&p, 1, VOCAB + 1).is_err());
    // A hidden-state header without its output matrix, or with a wrong-sized one.
    let mut h = header(1, 4);
    h.payload = Payload::Hidden {
        n_embd: 8,
        output_type: "F32".into(),
    };
    assert!(LogitsWriter::create(&p, h.clone(), &tokens(1), None).is_err());
    assert!(LogitsWriter::create(&p, h, &tokens(1), Some(&[0u8; 12])).is_err());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    assert!(&MAGIC[..] == b"FRUGLGT\0");
}

/// A hidden-state file: the output matrix and the hidden states come back
/// exactly, and multiplying them gives the base's logits.
#[test]
fn hidden_state_file_round_trips_and_rebuilds_logits() {
    use frugal_kernels::matmul::{matmul_f32, QuantizedActs};
    const EMBD: usize = 32;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("hidden.logits");
    let mut h = header(2, 1);
    h.payload = Payload::Hidden {
        n_embd: EMBD,
        output_type: "F32".into(),
    };
    let w: Vec<f32> = logits(VOCAB * EMBD, 5);
    let wbytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let n = scored_per_chunk(CTX);
    let hidden: Vec<Vec<f32>> = (0..2).map(|c| logits(n * EMBD, 50 + c)).collect();
    let mut wr = LogitsWriter::create(&p, h, &tokens(2), Some(&wbytes)).unwrap();
    for x in &hidden {
        wr.write_hidden(x).unwrap();
    }
    wr.finish().unwrap();
    let len = std::fs::metadata(&p).unwrap().len() as usize;
    let mut r = LogitsReader::open(&p).unwrap();
    let out = r.output_matrix().unwrap();
    assert_eq!((out.rows, out.cols), (VOCAB, EMBD));
    assert_eq!(out.data, &wbytes[..]);
    let mut got = ChunkData::TopK(BaseChunk::default());
    let mut acts = QuantizedActs::new();
    for x in &hidden {
        r.read_chunk(&mut got).unwrap();
        assert_eq!(got, ChunkData::Hidden(x.clone()));
        let mut l = vec![0.0f32; n * VOCAB];
        matmul_f32(&r.output_matrix().unwrap(), x, n, &mut acts, &mut l);
        // Row 3, token 7: a plain dot product.
        let want: f32 = (0..EMBD).map(|i| w[7 * EMBD + i] * x[3 * EMBD + i]).sum();
        assert!((l[3 * VOCAB + 7] - want).abs() < 1e-4 * want.abs().max(1.0));
    }
    // Damage to the output matrix is caught at open.
    let mut bytes = std::fs::read(&p).unwrap();
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let at = 16 + hlen + 2 * CTX * 4 + 32 + 100;
    bytes[at] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    assert!(open_err(&p).contains("output matrix fails its checksum"));
    std::fs::write(&p, &bytes[..len - 1]).unwrap();
    assert!(open_err(&p).contains("truncated"));
    // An output type without kernels, or a width that is not whole blocks.
    for (ty, embd) in [("Q8_K", 256), ("Q4_0", 33), ("nonsense", 32)] {
        let mut h = header(1, 1);
        h.payload = Payload::Hidden {
            n_embd: embd,
            output_type: ty.into(),
        };
        let json = serde_json::to_vec(&h).unwrap();
        let mut f = b"FRUGLGT\0".to_vec();
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&(json.len() as u32).to_le_bytes());
        f.extend_from_slice(&json);
        f.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&p, &f).unwrap();
        let e = open_err(&p);
        assert!(e.contains("corrupt header"), "{ty}: {e}");
    }
}
