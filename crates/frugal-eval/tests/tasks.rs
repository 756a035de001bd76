//! Task scoring on a real model (llama2.c stories260K from ../shared): the
//! prefix-reusing scorers must give what a plain full-sequence forward gives,
//! and target tokens must line up with the words they stand for.

use frugal_eval::perplexity::nll_of;
use frugal_eval::tasks::choice::{self, ChoiceItem};
use frugal_eval::tasks::lambada::{self, split_target};
use frugal_eval::tasks::ModelRunner;
use frugal_model::{sampling::argmax, LoadedModel, Logits};
use std::path::PathBuf;

fn stories() -> LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260K");
    assert!(
        dir.join("stories260K.bin").exists(),
        "test material missing: expected ../shared/models/stories260K beside the checkout (see the README)"
    );
    let lm =
        frugal_model::load(&dir.join("stories260K.bin"), Some(&dir.join("tok512.bin"))).unwrap();
    assert!(lm.tokenizer.add_bos());
    lm
}

/// Logits of every position of `tokens`, from an empty cache in one batch.
fn full_logits(lm: &LoadedModel, tokens: &[u32]) -> Vec<f32> {
    let m = &lm.model;
    let mut kv = m.new_cache(tokens.len()).unwrap();
    let mut st = m.new_state(tokens.len(), true);
    m.forward(tokens, &mut kv, &mut st, Logits::All)
        .unwrap()
        .to_vec()
}

#[test]
fn choice_scores_match_a_plain_forward() {
    let lm = stories();
    let n_vocab = lm.model.config.n_vocab;
    let item = ChoiceItem {
        context: "Once upon a time, there was a little girl named Lily. She".into(),
        choices: vec![
            "loved to play outside.".into(),
            "was happy.".into(),
            "loved the big red ball in the park with her mom and dad.".into(),
        ],
        label: 0,
    };
    let q = choice::tokenize(&item, &lm.tokenizer, 512).unwrap();
    let ctx_tokens = lm.tokenizer.encode(&item.context, true, false);
    assert_eq!(q.seqs[0][0], lm.tokenizer.bos_id().unwrap());
    assert!(q.shared >= ctx_tokens.len() - 1 && q.shared <= ctx_tokens.len() + 1);
    // Batches of 4 tokens: exercises chunked feeding as well.
    let mut runner = ModelRunner::new(&lm.model, 64, 4).unwrap();
    let got = choice::score(&mut runner, &q).unwrap();
    for (s, g) in q.seqs.iter().zip(&got) {
        let logits = full_logits(&lm, s);
        let want: f64 = (q.shared..s.len())
            .map(|j| -nll_of(&logits[(j - 1) * n_vocab..j * n_vocab], s[j]))
            .sum();
        assert_eq!(g.tokens, s.len() - q.shared);
        assert!(
            (g.logprob - want).abs() < 1e-3 * want.abs().max(1.0),
            "{} vs {want}",
            g.logprob
        );
    }
}

#[test]
fn lambada_target_is_the_last_word_and_greedy_matches_argmax() {
    let lm = stories();
    let n_vocab = lm.model.config.n_vocab;
    let tok = &lm.tokenizer;
    for text in [
        "Once upon a time, there was a little girl named Lily",
        "The dog ran to the park.\n\nHe was very happy",
        "She said, \"Let's play!\"",
    ] {
        let item = split_target(text).unwrap();
        let t = lambada::tokenize(&item, tok, 512).unwrap();
        // The target tokens spell the last word (with its leading space).
        let word = tok.decode(&t.tokens[t.start..]);
        assert_eq!(word.trim(), item.word(), "{text}");
        assert_eq!(
            tok.decode(&t.tokens[..t.start]).trim(),
            item.context(),
            "{text}"
        );

        let mut runner = ModelRunner::new(&lm.model, 128, 256).unwrap();
        let s = lambada::score(&mut runner, &t).unwrap();
        let logits = full_logits(&lm, &t.tokens);
        let row = |j: usize| &logits[(j - 1) * n_vocab..j * n_vocab];
        let greedy = (t.start..t.tokens.len()).all(|j| argmax(row(j)) == t.tokens[j]);
        let nll: f64 = (t.start..t.tokens.len())
            .map(|j| nll_of(row(j), t.tokens[j]))
            .sum();
        assert_eq!(s.greedy, greedy, "{text}");
        assert_eq!(s.tokens, t.tokens.len() - t.start);
        assert!(
            (s.nll - nll).abs() < 1e-3 * nll.max(1.0),
            "{} vs {nll}",
            s.nll
        );
    }
}

#[test]
fn long_contexts_are_cut_from_the_left() {
    let lm = stories();
    let tok = &lm.tokenizer;
    let long = "The cat sat. ".repeat(40) + "The end";
    let item = split_target(&long).unwrap();
    let full = lambada::tokenize(&item, tok, 4096).unwrap();
    let cut = lambada::tokenize(&item, tok, 32).unwrap();
    assert_eq!(cut.tokens.len(), 32);
    assert_eq!(cut.cut, full.tokens.len() - 32);
    assert_eq!(cut.tokens[0], tok.bos_id().unwrap());
    assert_eq!(cut.tokens[cut.start..], full.tokens[full.start..]);
    // Too small to hold the target after BOS: a reason, not a panic.
    let e = lambada::tokenize(&item, tok, full.tokens.len() - full.start).unwrap_err();
    assert!(e.contains("context of"), "{e}");

    let q = ChoiceItem {
        context: long.clone(),
        choices: vec!["a dog".into(), "a big red ball".into()],
        label: 1,
    };
    let s = choice::tokenize(&q, tok, 40).unwrap();
    assert!(s.cut > 0);
    assert_eq!(s.seqs.iter().map(Vec::len).max(), Some(40));
    assert!(s.seqs.iter().all(|x| x[0] == tok.bos_id().unwrap()));
}
