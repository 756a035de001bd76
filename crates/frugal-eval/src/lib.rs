//! Evaluation of a model's quality.

pub mod perplexity;
