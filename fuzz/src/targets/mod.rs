//! The fuzz targets, each `run(&[u8]) -> Result<(), String>`.

pub mod control;
pub mod fake;
pub mod build;
pub mod nat;
pub mod pipeline;
pub mod topology;
pub mod wire;
