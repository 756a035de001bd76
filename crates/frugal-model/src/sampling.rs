//! Choosing the next token from logits: repetition penalty, then top-k, top-p
//! and min-p filtering, then temperature and a seeded draw (the order of
//! llama.cpp's default chain). A temperature of 0 is greedy.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 or less: always take the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Check ranges, naming the offending option.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err(format!("temperature {} is not finite", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty {} must be positive",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    /// Candidate (logit, id) pairs, reused across calls.
    cand: Vec<(f32, u32)>,
    /// Candidate probabilities, reused across calls.
    probs: Vec<f32>,
    /// Distinct recent tokens, reused across calls.
    seen: Vec<u32>,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler {
            cfg,
            rng,
            cand: Vec::new(),
            probs: Vec::new(),
            seen: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Record a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        if self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.cfg.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Pick the next token. `logits` may be modified (penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let c = &self.cfg;
        if c.repeat_penalty != 1.0 {
            self.seen.clear();
            self.seen.extend(self.recent.iter().copied());
            self.seen.sort_unstable();
            self.seen.dedup();
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }

        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if c.top_k > 0 && c.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(c.top_k - 1, by_logit);
            self.cand.truncate(c.top_k);
        }
        self.cand.sort_unstable_by(by_logit);

        // Probabilities at temperature 1 for the p filters (as llama.cpp does).
        let max = self.cand[0].0;
        let probs = &mut self.probs;
        probs.clear();
        probs.extend(self.cand.iter().map(|&(l, _)| (l - max).exp()));
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);

        let mut keep = self.cand.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep);

        // Temperature, then a draw.
        probs.clear();
        probs.extend(
            self.cand
                .iter()
                .map(|&(l, _)| ((l - max) / c.temperature).exp()),
        );
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.gen::<f32>() * total;
        for (w, &(_, id)) in probs.iter().zip(&self.cand) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        self.cand[self.cand.len() - 1].1
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits()), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            });
            (0..64).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()), 1);
        }
    }

    #[test]
    fn top_k_limits_candidates() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 10.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits());
            assert!([1, 2, 5].contains(&t), "token {t} is outside the top 3");
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // p(1) ≈ 0.37, p(0) ≈ 0.05 at temperature 1: min-p 0.2 keeps 1, 5, 2 only.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 3.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits());
            assert!([1, 2, 5].contains(&t), "token {t} survived min-p");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 3.0,
            top_k: 0,
            top_p: 0.3,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&mut logits()), 1);
        }
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.5,
            ..Default::default()
        });
        s.accept(1);
        // 3.0 / 1.5 = 2.0 < 2.9: token 5 wins now.
        assert_eq!(s.sample(&mut logits()), 5);
    }

    #[test]
    fn validate_names_the_option() {
        let bad = SamplerConfig {
            top_p: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top-p"));
    }
}
