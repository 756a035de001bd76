pub mod bench;
pub mod chat;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod perplexity;
