//! Quantization: methods ([`method`], [`gptq`]) decide the rounded values,
//! formats ([`format`]) store them, and [`pipeline`] runs a whole model
//! through calibration, layer by layer.

pub mod budget;
pub mod format;
pub mod gptq;
pub mod imatrix;
pub mod method;
pub mod pipeline;
pub mod scales;

pub use format::{Format, TypeFormat};
pub use gptq::Gptq;
pub use method::{InputStats, Method, Rtn};
