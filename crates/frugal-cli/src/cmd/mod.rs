pub mod bench;
pub mod chat;
pub mod convert;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod perplexity;
